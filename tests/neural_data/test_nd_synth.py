"""The synthetic dataset: its planted answers are recoverable, it is deterministic, it looks like HvM."""
import hashlib
import json

import numpy as np
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.linear_model import LinearRegression

import neural_data
from neural_data import synth


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    path = synth.generate(tmp_path_factory.mktemp("synth") / "default")
    return path, neural_data.load(str(path))


def per_category_split(categories: np.ndarray, seed: int, train_fraction: float = 0.75) -> np.ndarray:
    rng = np.random.default_rng(seed)
    train = np.zeros(categories.size, dtype=bool)
    for category in np.unique(categories):
        members = rng.permutation(np.flatnonzero(categories == category))
        train[members[: int(round(train_fraction * members.size))]] = True
    return train


def median_test_r(features, responses, categories, make_model, n_splits=4) -> float:
    """Mean over 75/25 per-category splits of the median over sites of the test-set Pearson r."""
    medians = []
    for seed in range(n_splits):
        train = per_category_split(categories, seed)
        predicted = make_model().fit(features[train], responses[train]).predict(features[~train])
        observed = responses[~train]
        r = [np.corrcoef(predicted[:, j], observed[:, j])[0, 1] for j in range(observed.shape[1])]
        medians.append(np.median(r))
    return float(np.mean(medians))


def test_layout_and_shape_follow_majajhong(default_dataset):
    path, dataset = default_dataset
    assert {p.name for p in path.iterdir()} >= {"dataset.toml", "stimuli.csv", "images", "responses.npy",
                                                 "neuroids.csv", "truth.json", "hidden_features.npy"}
    table = dataset.stimuli.table
    assert len(table) == 320 and table["category_name"].value_counts().eq(40).all()
    assert table["object_name"].value_counts().eq(5).all() and table["object_name"].nunique() == 64
    assert set(table["variation"]) == {3, 6}
    assert dataset.sites_per_region() == {"V4": 14, "IT": 26}
    assert dataset.n_repetitions == {"min": 6, "median": 6, "max": 6}
    image = dataset.stimuli.open(dataset.stimuli.stimulus_ids[0])
    assert image.mode == "L" and image.size == (64, 64)
    features = np.load(path / "hidden_features.npy")
    assert features.shape == (320, 25)
    assert dataset.truth["regions"]["IT"]["n_sites"] == 26
    # the packaged metadata is the real HvM pose of each image
    meta = synth.hvm_metadata().set_index("hvm_index")
    np.testing.assert_allclose(table["rxy"], meta.loc[table["hvm_index"], "rxy"])


def test_pls_on_hidden_features_recovers_planted_predictivity(default_dataset):
    path, dataset = default_dataset
    features = np.load(path / "hidden_features.npy")
    averaged = dataset.averaged()
    categories = averaged["category_name"].values
    random_features = np.random.default_rng(0).normal(size=features.shape)
    for region in ("V4", "IT"):
        responses = averaged.values[:, averaged["region"].values == region]
        planted = dataset.truth["regions"][region]["predictivity"]
        pls = median_test_r(features, responses, categories, lambda: PLSRegression(25, scale=False))
        least_squares = median_test_r(features, responses, categories, LinearRegression)
        chance = median_test_r(random_features, responses, categories, LinearRegression)
        assert abs(pls - planted) < 0.02, (region, pls, planted)
        assert abs(least_squares - pls) < 1e-3  # 25 components on 25 features: least squares
        assert chance < planted - 0.5


def test_truth_noise_ceiling_matches_split_half_spearman_brown(default_dataset):
    path, dataset = default_dataset
    trials = np.load(path / "responses.npy")  # (site, image, rep)
    rng = np.random.default_rng(0)
    ceilings = []
    for _ in range(20):
        order = rng.permutation(trials.shape[2])
        half_a = trials[:, :, order[:3]].mean(axis=2)
        half_b = trials[:, :, order[3:]].mean(axis=2)
        r = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(half_a, half_b)])
        ceilings.append(2 * r / (1 + r))
    measured = np.mean(ceilings, axis=0)
    truth = dataset.truth["sites"]
    regions = np.array(truth["region"])
    for region in ("V4", "IT"):
        planted = dataset.truth["regions"][region]["noise_ceiling"]
        assert abs(np.median(measured[regions == region]) - planted) < 0.03, region
    np.testing.assert_allclose(np.square(truth["predictivity"]), truth["noise_ceiling"], rtol=1e-9)  # even reps


def test_v4_sites_follow_low_level_and_it_sites_high_level_features(default_dataset):
    path, dataset = default_dataset
    features = np.load(path / "hidden_features.npy")
    averaged = dataset.averaged()
    categories = averaged["category_name"].values
    low, high = features[:, :12], features[:, 12:]
    scores = {}
    for region in ("V4", "IT"):
        responses = averaged.values[:, averaged["region"].values == region]
        scores[region] = [median_test_r(part, responses, categories, LinearRegression, n_splits=2) for part in (low, high)]
    assert scores["V4"][0] > scores["V4"][1] and scores["IT"][1] > scores["IT"][0]


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_generation_is_byte_identical_given_the_seed(tmp_path):
    options = dict(n_images=32, n_sites=6, reps=2, image_size=16)
    first = synth.generate(tmp_path / "a", seed=5, **options)
    second = synth.generate(tmp_path / "b", seed=5, **options)
    other = synth.generate(tmp_path / "c", seed=6, **options)
    assert _digest(first) == _digest(second) != _digest(other)
    truth = json.loads((first / "truth.json").read_text())
    assert truth["settings"] == {**options, "seed": 5}


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_images must be between 32"):
        synth.generate(tmp_path / "x", n_images=10)
    with pytest.raises(ValueError, match="reps must be >= 2"):
        synth.generate(tmp_path / "y", reps=1)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        synth.generate(tmp_path / "z")


def test_registered_synthetic_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALIGN_CACHE", str(tmp_path))
    options = dict(n_images=32, n_sites=6, reps=2, image_size=16, seed=1)
    first = neural_data.load("synthetic", **options)
    folder = tmp_path / "datasets" / "synthetic-v1-i32-n6-r2-p16-s1"
    assert first.source == str(folder)
    stamp = (folder / "responses.npy").stat().st_mtime_ns
    again = neural_data.load("synthetic", **options)
    assert again.identifier == first.identifier and (folder / "responses.npy").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [folder.name]  # no staging left behind


def test_training_set_draws_the_same_objects_in_new_poses():
    images, labels = synth.training_set(n_per_class=3, image_size=32, seed=0)
    assert images.shape == (24, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (24,) and labels.dtype == np.int64 and np.bincount(labels).tolist() == [3] * 8
    assert synth.CATEGORIES == sorted(synth.hvm_metadata()["category_name"].unique())
    again, again_labels = synth.training_set(n_per_class=3, image_size=32, seed=0)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    other, _ = synth.training_set(n_per_class=3, image_size=32, seed=1)
    assert not np.array_equal(images, other)
    assert images.std() > 10  # not blank


def test_training_table_describes_each_image_and_its_label():
    images, labels, table = synth.training_set(n_per_class=2, image_size=24, seed=3, return_table=True)
    assert list(table.columns) == ["object_name", "category_name", "label", "variation", *synth.POSE_KEYS,
                                   "background_id"]
    assert len(table) == 16 and table["label"].tolist() == labels.tolist()
    assert [synth.CATEGORIES[k] for k in labels] == table["category_name"].tolist()
    _, objects = synth.categories_and_objects(synth.hvm_metadata())
    assert all(name in objects[category] for name, category in zip(table["object_name"], table["category_name"]))
    renderer = synth.Renderer(synth.CATEGORIES, objects, 24)
    for index in (0, 7, 15):  # the table is the whole recipe of an image
        row = table.iloc[index]
        pose = {key: float(row[key]) for key in synth.POSE_KEYS}
        np.testing.assert_array_equal(images[index], renderer(row["object_name"], pose, int(row["background_id"])))


def test_training_poses_follow_each_hvm_variation_level_in_new_combinations():
    meta = synth.hvm_metadata()
    table = synth.training_table(n_per_class=200, seed=0)  # no rendering: cheap
    assert set(table["variation"]) == {3, 6} and 0.4 < (table["variation"] == 3).mean() < 0.6
    for level, rows in table.groupby("variation"):
        hvm = meta[meta["variation"] == level]
        for key in synth.POSE_KEYS:  # every value is one of that level's HvM values ...
            assert set(rows[key]) <= set(hvm[key]), (level, key)
            assert abs(rows[key].abs().median() - hvm[key].abs().median()) < 0.15 * hvm[key].abs().max()
        hvm_poses = set(map(tuple, hvm[list(synth.POSE_KEYS)].to_numpy()))
        assert not any(tuple(pose) in hvm_poses for pose in rows[list(synth.POSE_KEYS)].to_numpy())  # ... not its pose
    assert table["background_id"].min() >= 100_000 > meta["background_id"].max()  # backgrounds HvM never shows
    only_3 = synth.training_table(n_per_class=5, seed=0, variations=(3,))
    assert set(only_3["variation"]) == {3} and only_3["ryz"].abs().max() <= meta.loc[meta["variation"] == 3, "ryz"].abs().max()


def test_held_out_renders_share_no_image_or_background_with_the_training_renders():
    train_images, _, train = synth.training_set(n_per_class=40, image_size=16, seed=0, return_table=True)
    val_images, _, val = synth.training_set(n_per_class=10, image_size=16, seed=1, return_table=True)
    assert not set(train["background_id"]) & set(val["background_id"])
    train_bytes = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_bytes for image in val_images)
    # the table of a larger set starts differently: seeds, not sizes, make sets independent
    assert not synth.training_table(40, seed=0)["background_id"].isin(synth.training_table(10, seed=1)["background_id"]).any()


def test_uniform_poses_reproduce_the_first_generator_byte_for_byte():
    images, labels, table = synth.training_set(n_per_class=3, image_size=16, seed=0, poses="uniform",
                                               return_table=True)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == "cff392f2cc64e8d2e74d645b7ae5db0813968d686e2aa75573ea52a9d11b4541"
    assert set(table["variation"]) == {6} and table["label"].tolist() == labels.tolist()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_per_class": 0}, "n_per_class must be >= 1"),
    ({"n_per_class": 1, "poses": "random"}, "poses must be one of hvm, uniform"),
    ({"n_per_class": 1, "variations": (4,)}, "HvM has no images of variation 4"),
    ({"n_per_class": 1, "variations": ()}, "at least one HvM variation level"),
])
def test_training_set_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synth.training_set(image_size=8, **kwargs)


def test_objects_are_distinct_fixed_shapes_of_a_sensible_size():
    from neural_data.render import object_parts, render

    plain = np.full((64, 64), 0.5)
    pose = {"rxy": 0.0, "rxz": 0.0, "ryz": 0.0, "ty": 0.0, "tz": 0.0, "s": 1.0}
    images = [render(object_parts(c, o), pose, plain).astype(float) for c, o in [(0, 0), (0, 0), (0, 1), (3, 0)]]
    np.testing.assert_array_equal(images[0], images[1])  # identities do not depend on any seed
    covered = np.mean(np.abs(images[0] - 127.5) > 2)
    assert 0.05 < covered < 0.7, covered
    same_category, other_category = (np.abs(images[0] - images[k]).mean() for k in (2, 3))
    assert same_category > 1 and other_category > 1
    moved = render(object_parts(0, 0), {**pose, "ty": 0.5}, plain).astype(float)
    assert np.abs(moved - images[0]).mean() > 1
