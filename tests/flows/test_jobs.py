"""flows.jobs without Prefect: checkpoint specs, datasets, the fan-out of fits and its reassembly."""
from __future__ import annotations

import numpy as np
import pytest

from flows import jobs

TINY_TRAINING = {"epochs": 1, "width": 0.125, "image_size": 16, "batch_size": 16}
TINY_SET = {"n_per_class": 3, "val_per_class": 2}
TINY_DATA = {"n_images": 64, "n_sites": 10, "reps": 4, "image_size": 32}
TINY_PROTOCOL = {"n_splits": 3, "n_components": 4}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def dataset(work):
    return jobs.prepare_dataset(jobs.SYNTHETIC, work, synthetic=TINY_DATA)


@pytest.fixture(scope="module")
def random_checkpoint(work):
    return jobs.resolve_checkpoint("random:resnet18", work, training=TINY_TRAINING, training_set=TINY_SET)


@pytest.fixture(scope="module")
def extracted(random_checkpoint, dataset, work):
    return jobs.extract_checkpoint(random_checkpoint, dataset, image_size=16, batch_size=32, work=work)


def test_random_checkpoint_is_seeded_and_saved_once(random_checkpoint, work):
    meta = jobs.checkpoint_metadata(random_checkpoint)
    assert meta["arch"] == "resnet18" and meta["epoch"] == 0 and meta["config"]["width"] == TINY_TRAINING["width"]
    before = random_checkpoint.stat().st_mtime_ns
    again = jobs.resolve_checkpoint("random:resnet18", work, training=TINY_TRAINING, training_set=TINY_SET)
    assert again == random_checkpoint and again.stat().st_mtime_ns == before


def test_rule_is_trained_once_then_reused_and_a_new_config_trains_anew(work):
    first = jobs.resolve_checkpoint("fa", work, training=TINY_TRAINING, training_set=TINY_SET)
    meta = jobs.checkpoint_metadata(first)
    assert meta["rule"] == "fa" and meta["epoch"] == 1 and meta["top1"] is not None
    assert [record["epoch"] for record in jobs.training_log(first)] == [1]
    stamp = first.stat().st_mtime_ns
    assert jobs.resolve_checkpoint("fa", work, training=TINY_TRAINING, training_set=TINY_SET) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not retrained
    other = jobs.resolve_checkpoint("fa", work, training={**TINY_TRAINING, "seed": 1}, training_set=TINY_SET)
    assert other != first and jobs.checkpoint_metadata(other)["seed"] == 1


def test_checkpoint_path_spec_is_returned_and_missing_file_is_a_clear_error(random_checkpoint, tmp_path):
    assert jobs.resolve_checkpoint(str(random_checkpoint), tmp_path) == random_checkpoint
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt.*no such file"):
        jobs.resolve_checkpoint(str(missing), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        jobs.check_checkpoint_spec(str(missing))


def test_unknown_rule_and_architecture_name_the_valid_ones():
    with pytest.raises(KeyError, match="'nosuchrule'.*preset.*sa"):
        jobs.check_checkpoint_spec("nosuchrule")
    with pytest.raises(KeyError, match="unknown architecture 'vgg'.*resnet18"):
        jobs.check_checkpoint_spec("random:vgg")


def test_checkpoint_digest_follows_the_file_content(random_checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "copy.pt"
    shutil.copy(random_checkpoint, copy)
    shutil.copy(random_checkpoint.with_suffix(".json"), copy.with_suffix(".json"))
    assert jobs.checkpoint_digest(copy) == jobs.checkpoint_digest(random_checkpoint)
    with open(copy, "ab") as handle:
        handle.write(b"changed")
    assert jobs.checkpoint_digest(copy) != jobs.checkpoint_digest(random_checkpoint)


def test_synthetic_dataset_is_generated_once_into_the_work_folder(dataset, work):
    assert dataset["path"].startswith(str(work / "datasets"))
    assert dataset["regions"] == ["V4", "IT"]
    again = jobs.prepare_dataset(jobs.SYNTHETIC, work, synthetic=TINY_DATA)
    assert again["identifier"] == dataset["identifier"]


def test_unknown_dataset_names_the_registered_ones(work):
    with pytest.raises(LookupError, match="unknown dataset 'NoSuchData'"):
        jobs.prepare_dataset("NoSuchData", work)


def test_protocol_spec_validates_and_keeps_n_components():
    spec = jobs.protocol_spec("paper", {"n_splits": 2, "n_components": 7})
    assert spec["n_splits"] == 2 and spec["n_components"] == 7 and spec["name"] == "paper"
    assert jobs.protocol_spec("brainscore")["n_components"] == jobs.N_COMPONENTS
    with pytest.raises(ValueError, match="unknown protocol"):
        jobs.protocol_spec("nope")
    with pytest.raises(ValueError, match="n_components"):
        jobs.protocol_spec("paper", {"n_components": 0})


def test_split_batches_cover_every_split_once():
    assert jobs.split_batches({}, {"n_splits": 7}, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="splits_per_task"):
        jobs.split_batches({}, {"n_splits": 7}, 0)


def _fan_out(extracted, dataset, protocol, batch):
    predictions = {}
    for layer in extracted["layers"]:
        jobs.layer_gram(extracted["store"], layer)
        for region in dataset["regions"]:
            for splits in jobs.split_batches(dataset, protocol, batch):
                predictions.update(jobs.fit_layer_region(extracted["store"], dataset, layer=layer, region=region,
                                                         protocol=protocol, splits=splits))
    return predictions


def test_fanned_out_fits_give_the_scores_of_one_pipeline_call(extracted, dataset):
    from pipeline.score import fit_scores
    from pipeline.store import ActivationStore

    protocol = jobs.protocol_spec("paper", TINY_PROTOCOL)
    predictions = _fan_out(extracted, dataset, protocol, batch=2)
    assert len(predictions) == len(extracted["layers"]) * 2 * 3
    fanned = jobs.score_checkpoint(extracted["store"], dataset, protocol, predictions, "random")
    data = jobs.dataset_of(dataset)
    direct = fit_scores(ActivationStore(extracted["store"]), data.averaged(), jobs._protocol(protocol),
                        checkpoint="random", trials=data.assembly, n_components=4, dataset=dataset["identifier"])
    np.testing.assert_allclose(fanned["median_r"].values, direct["median_r"].values, rtol=1e-9)
    np.testing.assert_allclose(fanned["r"].values, direct["r"].values, rtol=1e-9)
    assert np.isfinite(fanned["median_r"].values).all()


def test_predictions_that_do_not_match_their_job_are_refused(extracted, dataset):
    protocol = jobs.protocol_spec("paper", TINY_PROTOCOL)
    predictions = _fan_out(extracted, dataset, protocol, batch=3)
    # Shift every prediction of the first layer: whichever job the check recomputes, it must disagree.
    first_layer = extracted["layers"][0]
    for key in [key for key in predictions if key[0] == first_layer]:
        predictions[key] = predictions[key] + 1.0
    with pytest.raises(RuntimeError, match=f"layer '{first_layer}'.*differs from the pipeline's own fit"):
        jobs.score_checkpoint(extracted["store"], dataset, protocol, predictions, "random")


def test_run_fit_writes_a_report_and_compare_merges_two_runs(random_checkpoint, dataset, work, tmp_path):
    import csv

    common = dict(dataset=jobs.SYNTHETIC, synthetic=TINY_DATA, work=work, layers=["layer4.1", "avgpool"],
                  protocol_options=TINY_PROTOCOL, extraction={"image_size": 16, "batch_size": 32})
    first = jobs.run_fit([str(random_checkpoint)], out=tmp_path / "a", **common)
    rows = list(csv.DictReader(open(first / "summary.csv")))
    assert len(rows) == 2 * 2 and all(np.isfinite(float(row["median_r"])) for row in rows)
    second = jobs.run_fit(["random:resnet18"], out=tmp_path / "b", training=TINY_TRAINING, training_set=TINY_SET,
                          **common)
    merged = jobs.compare_runs([first, second], tmp_path / "ab")
    assert (merged / "summary.csv").is_file() and (merged / "report.md").is_file()
    with pytest.raises(FileNotFoundError, match="not found"):
        jobs.compare_runs([tmp_path / "nowhere"], tmp_path / "x")


def test_cli_fit_and_compare_report_bad_input_without_a_traceback(tmp_path, capsys):
    from flows.cli import main
    from flows.cli_pipeline import parse_layers

    assert parse_layers("default") == "default" and parse_layers("layer3.1, fc") == ["layer3.1", "fc"]
    code = main(["fit", "--checkpoint", "random:resnet18", "--dataset", "NoSuchData", "--out", str(tmp_path / "o"),
                 "--work", str(tmp_path / "w")])
    assert code == 2 and "unknown dataset 'NoSuchData'" in capsys.readouterr().err
    code = main(["fit", "--checkpoint", str(tmp_path / "gone.pt"), "--dataset", "synthetic", "--out", str(tmp_path)])
    assert code == 2 and "gone.pt" in capsys.readouterr().err
    code = main(["compare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")])
    assert code == 2 and "nowhere" in capsys.readouterr().err


def test_real_dataset_without_its_files_says_where_to_point_it(work, monkeypatch, tmp_path):
    monkeypatch.delenv("NEURALIGN_MAJAJHONG2015", raising=False)
    with pytest.raises(FileNotFoundError, match="data_root.*NEURALIGN_MAJAJHONG2015"):
        jobs.prepare_dataset("MajajHong2015", work)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        jobs.prepare_dataset("MajajHong2015", work, data_root=str(tmp_path / "empty"))


def test_train_checkpoint_into_a_given_folder(tmp_path):
    path = jobs.train_checkpoint("kp", data="builtin:synthetic", out=tmp_path / "kp", training=TINY_TRAINING,
                                 training_set=TINY_SET, work=tmp_path / "work")
    assert path.parent == (tmp_path / "kp").resolve()
    meta = jobs.checkpoint_metadata(path)
    assert meta["rule"] == "kp" and meta["config"]["width"] == TINY_TRAINING["width"] and meta["epoch"] == 1
