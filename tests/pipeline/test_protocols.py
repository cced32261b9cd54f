"""Split protocols and Pearson against direct sklearn / scipy computations."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.model_selection import StratifiedShuffleSplit

from pipeline.protocols import (
    PROTOCOLS,
    get_protocol,
    pearson_per_site,
    row_order,
    summarize,
)


def _metadata(n_categories=4, per_category=20, objects_per_category=2):
    rows = [{"category_name": f"cat{c}", "object_name": f"cat{c}_obj{i % objects_per_category}"}
            for c in range(n_categories) for i in range(per_category)]
    return pd.DataFrame(rows)


def test_pearson_per_site_equals_scipy():
    rng = np.random.default_rng(0)
    pred, actual = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    actual[:, 2] += 3 * pred[:, 2]
    expected = [pearsonr(pred[:, j], actual[:, j])[0] for j in range(5)]
    np.testing.assert_allclose(pearson_per_site(pred, actual), expected, atol=1e-12)


def test_constant_sites_give_nan_not_a_number():
    rng = np.random.default_rng(1)
    pred, actual = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    actual[:, 0] = 4.0
    pred[:, 1] = -1.0
    r = pearson_per_site(pred, actual)
    assert np.isnan(r[0]) and np.isnan(r[1]) and np.isfinite(r[2])


def test_paper_split_is_75_25_within_each_category_and_seeded():
    meta = _metadata()
    protocol = get_protocol("paper", n_splits=3, seed=7)
    splits = protocol.splits(meta)
    assert len(splits) == 3
    for train, test in splits:
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(meta)
        counts = meta.iloc[test]["category_name"].value_counts()
        assert (counts == 5).all() and len(counts) == 4
    assert not np.array_equal(splits[0][1], splits[1][1])
    again = get_protocol("paper", n_splits=3, seed=7).splits(meta)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    other_seed = get_protocol("paper", n_splits=3, seed=8).splits(meta)
    assert not np.array_equal(splits[0][1], other_seed[0][1])


def test_brainscore_split_equals_sklearn_stratified_shuffle_split():
    meta = _metadata(per_category=30, objects_per_category=3)
    protocol = get_protocol("brainscore")
    assert (protocol.n_splits, protocol.train_size, protocol.seed, protocol.stratify_by) == (10, 0.9, 1, "object_name")
    reference = StratifiedShuffleSplit(n_splits=10, train_size=0.9, random_state=1)
    for (train, test), (ref_train, ref_test) in zip(protocol.splits(meta),
                                                    reference.split(np.zeros(len(meta)), meta["object_name"])):
        np.testing.assert_array_equal(train, np.sort(ref_train))
        np.testing.assert_array_equal(test, np.sort(ref_test))


def test_summaries_follow_each_protocol():
    rng = np.random.default_rng(2)
    r = rng.uniform(0.2, 0.8, size=(10, 25))
    paper = summarize(r, PROTOCOLS["paper"])
    site = r.mean(axis=0)
    assert paper["median_r"] == pytest.approx(np.median(site))
    assert paper["sem"] == pytest.approx(site.std(ddof=1) / np.sqrt(25))
    bs = summarize(r, PROTOCOLS["brainscore"])
    per_split = np.median(r, axis=1)
    assert bs["median_r"] == pytest.approx(per_split.mean())
    assert bs["sem"] == pytest.approx(per_split.std(ddof=0) / np.sqrt(10))


def test_nan_sites_are_counted_and_excluded():
    r = np.tile(np.linspace(0.1, 0.9, 6), (4, 1))
    r[2, 0] = np.nan
    out = summarize(r, PROTOCOLS["paper"])
    assert out["n_nan_sites"] == 1 and out["n_sites"] == 5
    assert out["median_r"] == pytest.approx(np.median(np.linspace(0.1, 0.9, 6)[1:]))


def test_brainscore_drops_a_nan_site_from_that_split_only():
    rng = np.random.default_rng(3)
    r = rng.uniform(0.2, 0.8, size=(10, 7))
    r[4, 2] = np.nan
    r[7, 5] = np.nan
    out = summarize(r, PROTOCOLS["brainscore"])
    per_split = np.array([np.median(row[np.isfinite(row)]) for row in r])
    np.testing.assert_allclose(out["split_median"], per_split, rtol=0, atol=1e-15)
    assert out["median_r"] == pytest.approx(per_split.mean(), abs=1e-15)
    assert out["sem"] == pytest.approx(per_split.std(ddof=0) / np.sqrt(10), abs=1e-15)
    assert (out["n_sites"], out["n_nan_sites"]) == (7, 2)
    dropped_everywhere = np.median(np.delete(r, [2, 5], axis=1), axis=1).mean()
    assert abs(out["median_r"] - dropped_everywhere) > 1e-4


def test_brainscore_split_with_no_finite_site_is_skipped_but_counted_in_the_error():
    r = np.tile(np.linspace(0.1, 0.9, 5), (4, 1))
    r[:, 4] += np.array([0.0, 0.05, 0.1, 0.0])
    r[1] = np.nan
    out = summarize(r, PROTOCOLS["brainscore"])
    medians = np.median(r[[0, 2, 3]], axis=1)
    assert np.isnan(out["split_median"][1])
    assert out["median_r"] == pytest.approx(medians.mean())
    assert out["sem"] == pytest.approx(medians.std(ddof=0) / np.sqrt(4))


def test_row_order_and_ceiling_are_part_of_each_protocol():
    ids = ["c", "a", "b", "a0"]
    np.testing.assert_array_equal(row_order(ids, PROTOCOLS["brainscore"]), [1, 3, 2, 0])
    np.testing.assert_array_equal(row_order(ids, PROTOCOLS["paper"]), [0, 1, 2, 3])
    paper, bs = PROTOCOLS["paper"], PROTOCOLS["brainscore"]
    assert (paper.row_order, paper.ceiling, paper.ceiling_formula) == ("stimulus_table", "split_half", "r/c")
    assert (bs.row_order, bs.ceiling, bs.ceiling_formula) == ("stimulus_id", "internal_consistency", "r^2/c")
    assert bs.attrs()["protocol_ceiling"] == "internal_consistency"
    assert get_protocol("paper", ceiling_formula="r^2/c").ceiling_formula == "r^2/c"


def test_bad_protocol_inputs_raise():
    with pytest.raises(ValueError, match="unknown protocol 'nope'.*brainscore"):
        get_protocol("nope")
    with pytest.raises(LookupError, match="no column 'category_name'.*\"none\" for plain random"):
        get_protocol("paper").splits(pd.DataFrame({"x": range(10)}))
    with pytest.raises(ValueError, match="test images"):
        get_protocol("paper").splits(_metadata(n_categories=2, per_category=2))
    with pytest.raises(ValueError, match="at least 2"):
        get_protocol("paper").splits(pd.DataFrame({"category_name": ["a"] * 10 + ["b"]}))
    with pytest.raises(ValueError, match="unknown ceiling 'noise'.*internal_consistency"):
        get_protocol("brainscore", ceiling="noise")
    with pytest.raises(ValueError, match="unknown ceiling_formula 'r/sqrt.c.'"):
        get_protocol("brainscore", ceiling_formula="r/sqrt(c)")
    with pytest.raises(ValueError, match="unknown row_order 'random'"):
        get_protocol("paper", row_order="random")


def test_paper_split_equals_an_independent_construction_and_stratify_by_changes_it():
    """The documented recipe, rebuilt with pandas: per group (sorted), a generator seeded [seed, split] permutes
    the group's rows and the first round(0.75 n) train."""
    meta = _metadata(n_categories=3, per_category=12, objects_per_category=4)

    def recipe(column, seed, split):
        rng = np.random.default_rng([seed, split])
        train = []
        for _, rows in meta.groupby(column, sort=True):
            shuffled = rng.permutation(rows.index.to_numpy())
            train += list(shuffled[:round(0.75 * len(shuffled))])
        return np.sort(train)

    for column in ("category_name", "object_name"):
        splits = get_protocol("paper", n_splits=3, seed=5, stratify_by=column).splits(meta)
        for split, (train, test) in enumerate(splits):
            np.testing.assert_array_equal(train, recipe(column, 5, split))
            np.testing.assert_array_equal(test, np.setdiff1d(np.arange(len(meta)), train))
    by_object = get_protocol("paper", stratify_by="object_name").splits(meta)[0][1]
    by_category = get_protocol("paper").splits(meta)[0][1]
    assert not np.array_equal(by_object, by_category)
    assert (meta.iloc[by_object]["object_name"].value_counts() == 1).all()  # 3 images of each object: 2/1


def test_none_draws_plain_seeded_random_splits():
    meta = pd.DataFrame({"image": range(40)})  # no category column at all
    splits = get_protocol("paper", stratify_by="none", n_splits=2, seed=3).splits(meta)
    rng = np.random.default_rng([3, 0])
    expected_train = np.sort(rng.permutation(40)[:30])
    np.testing.assert_array_equal(splits[0][0], expected_train)
    assert len(splits[0][1]) == 10 and not np.array_equal(splits[0][1], splits[1][1])
