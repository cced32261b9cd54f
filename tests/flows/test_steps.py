"""The steps shared by the CLI and the flows, without Prefect: checkpoint specs, datasets, the fan-out of fits."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from flows import checkpoints, steps
from flows.datasets import SYNTHETIC, dataset_of, prepare_dataset

TINY_TRAINING = {"epochs": 1, "width": 0.125, "small_input": True, "image_size": 16, "batch_size": 16}
TINY_SET = {"n_per_class": 3, "val_per_class": 2}
TINY_DATA = {"n_images": 64, "n_sites": 10, "reps": 4, "image_size": 32}
TINY_PROTOCOL = {"n_splits": 3, "n_components": 4}
TINY_RANDOM = "random:resnet18?width=0.125&small_input=1&num_classes=8"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def dataset(work):
    return prepare_dataset(SYNTHETIC, work, synthetic=TINY_DATA)


@pytest.fixture(scope="module")
def random_reference():
    return checkpoints.resolve(TINY_RANDOM)


@pytest.fixture(scope="module")
def extracted(random_reference, dataset, work):
    return steps.extract_checkpoint(random_reference, dataset, image_size=16, batch_size=32, work=work)


# ------------------------------------------------------------------------------------------- checkpoint specs
def test_random_spec_options_reach_the_network(random_reference):
    assert random_reference["kind"] == "random" and random_reference["rule"] == "random"
    assert random_reference["width"] == 0.125 and random_reference["small_input"] is True
    model = checkpoints.load_model(random_reference)
    assert model.fc.out_features == 8 and model.conv1.out_channels == 8 and model.conv1.stride == (1, 1)
    again = checkpoints.resolve(TINY_RANDOM)
    assert again["sha256"] == random_reference["sha256"]  # seeded
    other_seed = checkpoints.resolve(TINY_RANDOM + "&seed=1")
    assert other_seed["sha256"] != random_reference["sha256"]


def test_standard_random_baseline_is_full_width_at_224_px():
    reference = checkpoints.resolve("random:resnet18")
    assert (reference["width"], reference["small_input"], reference["image_size"]) == (1.0, False, 224)
    assert steps.extraction_settings(reference, None) == {"image_size": 224, "batch_size": 64}
    sklearn_default = {"regression": "pls-sklearn-default"}
    assert steps.extraction_settings(reference, None, sklearn_default)["keep_activations"] is True
    with pytest.raises(ValueError, match="unknown setting.*size"):
        steps.extraction_settings(reference, {"size": 3})
    assert steps.extraction_settings(reference, {"image_size": 64})["image_size"] == 64


@pytest.mark.parametrize("spec, message", [
    ("random:vgg", "unknown architecture 'vgg'.*resnet18"),
    ("random:resnet18?depth=3", "unknown option 'depth'"),
    ("random:resnet18?width=wide", "width='wide' is not a float"),
    ("random:resnet18?small_input=maybe", "small_input='maybe' is not a 0/1/true/false"),
    ("torchvision:resnet18", "expected torchvision:ARCH=PATH"),
    ("nosuchrule", "'nosuchrule' is not a file.*preset.*sa"),
])
def test_bad_specs_are_refused_before_any_work(spec, message):
    with pytest.raises(ValueError, match=message):
        checkpoints.check(spec, TINY_TRAINING)


def test_rule_names_need_explicit_training_settings():
    with pytest.raises(ValueError, match="no training settings were given"):
        checkpoints.check("sa", None)
    checkpoints.check("sa", TINY_TRAINING)


def test_rule_is_trained_once_then_reused_and_a_new_config_trains_anew(work):
    first = checkpoints.resolve("fa", work, training=TINY_TRAINING, training_set=TINY_SET)
    assert first["rule"] == "fa" and first["kind"] == "trained" and first["top1"] is not None
    assert first["image_size"] == 16 and first["width"] == 0.125
    assert [record["epoch"] for record in checkpoints.training_log(first)] == [1]
    path = first["path"]
    stamp = __import__("os").stat(path).st_mtime_ns
    assert checkpoints.resolve("fa", work, training=TINY_TRAINING, training_set=TINY_SET)["path"] == path
    assert __import__("os").stat(path).st_mtime_ns == stamp  # reused, not retrained
    other = checkpoints.resolve("fa", work, training={**TINY_TRAINING, "seed": 1}, training_set=TINY_SET)
    assert other["path"] != path and other["seed"] == 1


def test_checkpoint_file_spec_and_missing_file(work, tmp_path):
    trained = checkpoints.resolve("fa", work, training=TINY_TRAINING, training_set=TINY_SET)
    as_file = checkpoints.resolve(trained["path"])
    assert as_file["kind"] == "file" and as_file["sha256"] == trained["sha256"] and as_file["rule"] == "fa"
    with pytest.raises(FileNotFoundError, match="nope.pt.*no such file"):
        checkpoints.check(str(tmp_path / "nope.pt"))


def test_torchvision_state_dict_is_a_bp_checkpoint_with_unknown_accuracy(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    reference = checkpoints.resolve(f"torchvision:resnet18={weights}")
    assert (reference["rule"], reference["top1"], reference["image_size"]) == ("bp", None, 224)
    model = checkpoints.load_model(reference)
    assert torch.equal(model.state_dict()["conv1.weight"], torch.load(weights)["conv1.weight"])
    checkpoints.check(str(weights))  # the file exists: what it holds is its checkpoint's own work
    with pytest.raises(ValueError, match="torchvision:resnet18="):
        checkpoints.resolve(str(weights))  # a bare state_dict says how to load it


# ------------------------------------------------------------------------------------------------ datasets
def test_synthetic_dataset_is_generated_once_into_the_work_folder(dataset, work):
    assert dataset["path"].startswith(str(work / "datasets"))
    assert dataset["regions"] == ["V4", "IT"] and dataset["stratify_by"] == "category_name"
    assert prepare_dataset(SYNTHETIC, work, synthetic=TINY_DATA)["identifier"] == dataset["identifier"]


def test_unknown_dataset_names_the_registered_ones(work):
    with pytest.raises(LookupError, match="unknown dataset 'NoSuchData'"):
        prepare_dataset("NoSuchData", work)


def test_real_dataset_without_its_files_says_where_to_point_it(work, monkeypatch, tmp_path):
    monkeypatch.delenv("NEURALIGN_MAJAJHONG2015", raising=False)
    with pytest.raises(FileNotFoundError, match="data_root.*NEURALIGN_MAJAJHONG2015"):
        prepare_dataset("MajajHong2015", work)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        prepare_dataset("MajajHong2015", work, data_root=str(tmp_path / "empty"))


# ----------------------------------------------------------------------------------------------- protocol
def test_protocol_spec_validates_and_keys_every_setting(dataset):
    spec = steps.protocol_spec("paper", {"n_splits": 2, "n_components": 7}, dataset)
    assert (spec["n_splits"], spec["n_components"], spec["name"], spec["regression"]) == (2, 7, "paper", "pls")
    assert spec["stratify_by"] == "category_name"
    assert steps.protocol_spec("paper", {"stratify_by": "object_name"}, dataset)["stratify_by"] == "object_name"
    assert steps.protocol_spec("brainscore", None, dataset)["stratify_by"] == "object_name"
    with pytest.raises(ValueError, match="unknown protocol"):
        steps.protocol_spec("nope")
    with pytest.raises(ValueError, match="n_components"):
        steps.protocol_spec("paper", {"n_components": 0})
    with pytest.raises(ValueError, match="regression"):
        steps.protocol_spec("paper", {"regression": "ridge"})


def test_split_batches_cover_every_split_once():
    assert steps.split_batches({"n_splits": 7}, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="splits_per_task"):
        steps.split_batches({"n_splits": 7}, 0)


# ------------------------------------------------------------------------------------------ fits and scores
def test_fanned_out_fits_give_the_scores_of_one_pipeline_call(extracted, dataset):
    from pipeline.score import fit_scores
    from pipeline.store import FeatureStore

    protocol = steps.protocol_spec("paper", TINY_PROTOCOL, dataset)
    predictions = {}
    for layer in reversed(extracted["layers"]):
        for region in ("IT", "V4"):
            for batch in steps.split_batches(protocol, 2):
                predictions.setdefault(layer, {}).update(steps.fit_layer_region(
                    extracted["store"], dataset, layer=layer, region=region, protocol=protocol, splits=batch))
    ordered = {layer: predictions[layer] for layer in extracted["layers"]}
    fanned = steps.score_checkpoint(dataset, protocol, ordered, "random")
    data = dataset_of(dataset)
    direct = fit_scores(FeatureStore(extracted["store"]), data.averaged(), "paper", n_splits=3, n_components=4,
                        checkpoint="random", trials=data.assembly, dataset=dataset["identifier"])
    np.testing.assert_allclose(fanned["median_r"].values, direct["median_r"].values, rtol=1e-12)
    np.testing.assert_allclose(fanned["r"].values, direct["r"].values, rtol=1e-12)
    assert np.isfinite(fanned["median_r"].values).all()
    assert extracted["preprocessing"]["image_size"] == 16


def test_run_fit_writes_a_report_and_compare_merges_two_runs(dataset, work, tmp_path):
    common = dict(dataset=SYNTHETIC, synthetic=TINY_DATA, work=work, layers=["layer4.1", "avgpool"],
                  protocol_options=TINY_PROTOCOL)
    first = steps.run_fit([TINY_RANDOM], out=tmp_path / "a", extraction={"image_size": 16}, **common).out
    rows = list(csv.DictReader(open(first / "summary.csv")))
    assert len(rows) == 2 * 2 and all(np.isfinite(float(row["median_r"])) for row in rows)
    second = steps.run_fit(["fa"], out=tmp_path / "b", training=TINY_TRAINING, training_set=TINY_SET, **common).out
    recorded = json.loads((second / "checkpoints.json").read_text())
    assert recorded[0]["preprocessing"]["image_size"] == 16  # the trained size, without a size flag
    merged = steps.compare_runs([first, second], tmp_path / "ab")
    assert (merged / "summary.csv").is_file() and (merged / "report.md").is_file()
    with pytest.raises(FileNotFoundError, match="not found"):
        steps.compare_runs([tmp_path / "nowhere"], tmp_path / "x")


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


def test_fit_help_shows_every_default(capsys):
    from flows.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--components K PLS components (default: 25)", "(default: paper)",
                  "--batch-size BATCH_SIZE images per forward pass (default: 64)", "224 for ImageNet"):
        assert shown in text, shown


def test_train_checkpoint_into_a_given_folder(tmp_path):
    path = checkpoints.train_checkpoint("kp", out=tmp_path / "kp", training=TINY_TRAINING, training_set=TINY_SET,
                                        work=tmp_path / "work")
    assert path.parent == (tmp_path / "kp").resolve()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["rule"] == "kp" and meta["config"]["width"] == TINY_TRAINING["width"] and meta["epoch"] == 1


def test_seeded_random_baselines_are_identical_when_resolved_in_concurrent_threads():
    """The flows' thread task runner resolves and rebuilds several checkpoints at once."""
    from concurrent.futures import ThreadPoolExecutor

    specs = [TINY_RANDOM + f"&seed={seed}" for seed in (0, 1, 2, 3)] * 2
    alone = {spec: checkpoints.resolve(spec)["sha256"] for spec in specs[:4]}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda spec: checkpoints.resolve(spec)["sha256"], specs))
        rebuilt = list(pool.map(lambda spec: __import__("models").weights_sha256(
            checkpoints.load_model(checkpoints.resolve(spec))), specs))
    assert together == [alone[spec] for spec in specs] == rebuilt


def test_cli_fits_random_and_torchvision_checkpoints_at_their_own_224_px(tmp_path, dataset, work, capsys):
    """No size flag: the standard random baseline and a torchvision state_dict are extracted at 224 px (read
    back from the preprocessing the report records), labelled `random` and `bp`."""
    import csv

    import torchvision

    from flows.cli import main

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    code = main(["fit", "--checkpoint", "random:resnet18", "--checkpoint", f"torchvision:resnet18={weights}",
                 "--dataset", dataset["path"], "--layers", "avgpool", "--splits", "2", "--components", "4",
                 "--out", str(tmp_path / "report"), "--work", str(work)])
    assert code == 0, capsys.readouterr().err
    recorded = {meta["name"]: meta for meta in json.loads((tmp_path / "report" / "checkpoints.json").read_text())}
    assert {meta["preprocessing"]["image_size"] for meta in recorded.values()} == {224}
    rows = list(csv.DictReader(open(tmp_path / "report" / "summary.csv")))
    assert {(row["rule"], row["image_size"], row["width"]) for row in rows} == {("random", "224", "1.000000"),
                                                                               ("bp", "224", "1.000000")}
