"""Checkpoints: round trip of W and B, sidecar metadata, provenance checks, atomic writes, clear errors,
torchvision and plain state_dict files."""
import json

import pytest
import torch
import torchvision

import models
from models.checkpoint import (ProvenanceError, checkpoint_metadata, load_checkpoint, load_torchvision, metadata_path,
                               read_checkpoint, save_checkpoint, weights_sha256)
from models.data import ArrayDataset
from models.presets import TrainConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_config(rule="sa", arch="resnet18", **kw) -> TrainConfig:
    return TrainConfig(rule=rule, arch=arch, width=0.0625, small_input=True, image_size=16, num_classes=10, **kw)


def test_round_trip_restores_w_and_b_and_writes_the_sidecar(tmp_path):
    config = tiny_config("sa", terms={"self": 1.0, "decay": 0.5})
    model = models.build_model("resnet18", "sa", num_classes=10, width=0.0625, small_input=True)
    path = tmp_path / "run" / "model.pt"
    metadata = save_checkpoint(path, model, config, {"epoch": 3, "step": 30, "dataset": "digits"},
                               {"top1": 0.5, "top5": 0.9})
    sidecar = json.loads(metadata_path(path).read_text())
    assert metadata_path(path) == tmp_path / "run" / "model.json"
    assert sidecar == json.loads(json.dumps(metadata))
    for key in ("rule", "preset", "arch", "config", "epoch", "top1", "top5", "dataset", "seed", "sha256",
                "package_version", "status"):
        assert key in sidecar
    assert (sidecar["rule"], sidecar["epoch"], sidecar["top1"], sidecar["status"]) == ("sa", 3, 0.5, "ok")
    assert sidecar["config"]["terms"] == {"self": 1.0, "decay": 0.5}

    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta["sha256"] == weights_sha256(model) == weights_sha256(loaded)
    for (name, a), (_, b) in zip(models.asymmetric_layers(model), models.asymmetric_layers(loaded)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight_backward, b.weight_backward), name
    first_layer = models.asymmetric_layers(loaded)[0][1]
    assert dict(first_layer.rule.terms) == {"self": 1.0, "decay": 0.5}  # the config's terms, not sa's defaults
    assert not list(tmp_path.glob("run/.*tmp"))  # no temporary files left behind


def test_sha256_changes_with_any_weight_including_b():
    assert models.weights_sha256 is weights_sha256  # one hash for the whole project
    model = models.build_model("resnet18", "fa", num_classes=10, width=0.0625, small_input=True)
    before = weights_sha256(model)
    with torch.no_grad():
        models.backward_parameters(model)[0].view(-1)[0] += 1e-3
    assert weights_sha256(model) != before


def test_missing_truncated_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_checkpoint(tmp_path / "nothere.pt")
    model = models.build_model("resnet18", "fa", num_classes=10, width=0.0625, small_input=True)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, tiny_config("fa"), {"epoch": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt.*truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt.*not a neuralign checkpoint"):
        load_checkpoint(foreign)


def test_wrong_architecture_names_file_and_mismatch(tmp_path):
    model = models.build_model("resnet18", "fa", num_classes=10, width=0.0625, small_input=True)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, tiny_config("fa"), {"epoch": 1})
    payload = torch.load(path, weights_only=True)
    payload["metadata"]["config"]["arch"] = "resnet34"
    torch.save(payload, tmp_path / "relabelled.pt")
    with pytest.raises(ValueError, match=r"relabelled.pt.*'resnet34'.*missing keys"):
        load_checkpoint(tmp_path / "relabelled.pt")
    payload["metadata"]["config"].update(arch="resnet18", width=0.125)
    torch.save(payload, tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"wider.pt.*shape mismatches"):
        load_checkpoint(tmp_path / "wider.pt")


def test_torchvision_state_dict_loads_as_bp_with_given_or_measured_accuracy(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model, metadata = load_torchvision(path, arch="resnet18", top1=0.6976, top5=0.8908)
    assert (metadata["rule"], metadata["top1"], metadata["top5"], metadata["num_classes"]) == ("bp", 0.6976, 0.8908, 10)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images))
    assert metadata["sha256"] == weights_sha256(reference.state_dict())

    labels = torch.arange(4) % 10
    val = ArrayDataset(torch.rand(4, 32, 32, 3).numpy(), labels.numpy(), name="val")
    measured_model, measured = load_torchvision(path, arch="resnet18", val_set=val)
    with torch.no_grad():
        predictions = reference(val.images).argmax(1)
    assert measured["top1"] == pytest.approx((predictions == val.labels).float().mean().item())

    with pytest.raises(ValueError, match=r"resnet18.pth.*'resnet34'"):
        load_torchvision(path, arch="resnet34")


def test_read_checkpoint_keeps_training_state(tmp_path):
    model = models.build_model("resnet18", "sa", num_classes=10, width=0.0625, small_input=True)
    optimizer = torch.optim.Adam(models.backward_parameters(model), lr=1e-3)
    sum(p.sum() for p in models.backward_parameters(model)).backward()
    optimizer.step()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, tiny_config("sa"), {"epoch": 2, "step": 7, "optimizers": {"alignment": optimizer.state_dict()}})
    payload = read_checkpoint(path)
    assert payload["metadata"]["step"] == 7
    assert payload["optimizers"]["alignment"]["state"][0]["step"] == 1


# ---------------------------------------------------------------------------------------------------------
# Provenance: the sidecar is a copy of the embedded metadata, and the weights hash to the recorded sha256


def saved_checkpoint(tmp_path, name="model.pt"):
    model = models.build_model("resnet18", "fa", num_classes=10, width=0.0625, small_input=True)
    path = tmp_path / name
    save_checkpoint(path, model, tiny_config("fa", epochs=3), {"epoch": 3, "step": 9, "dataset": "digits"},
                    {"top1": 0.5, "top5": 0.9})
    return path


def test_checkpoint_metadata_says_where_it_came_from(tmp_path):
    path = saved_checkpoint(tmp_path)
    with_sidecar = checkpoint_metadata(path)
    assert with_sidecar["metadata_source"] == "sidecar"
    _, loaded = load_checkpoint(path)
    assert loaded == with_sidecar
    metadata_path(path).unlink()
    embedded = checkpoint_metadata(path)
    assert embedded["metadata_source"] == "embedded"
    assert {k: v for k, v in embedded.items() if k != "metadata_source"} == \
        {k: v for k, v in with_sidecar.items() if k != "metadata_source"}
    assert load_checkpoint(path)[1]["metadata_source"] == "embedded"


@pytest.mark.parametrize("field,value,named", [
    ("top1", 0.99, "top1"), ("rule", "bp", "rule"), ("seed", 7, "seed"), ("sha256", "0" * 64, "sha256"),
])
def test_a_sidecar_that_disagrees_is_refused_naming_both_files_and_fields(tmp_path, field, value, named):
    path = saved_checkpoint(tmp_path)
    sidecar = json.loads(metadata_path(path).read_text())
    sidecar[field] = value
    metadata_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(ProvenanceError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(metadata_path(path)) in message and str(path) in message
    assert f"on {named} (" in message


def test_nested_config_differences_are_named_by_their_path(tmp_path):
    path = saved_checkpoint(tmp_path)
    sidecar = json.loads(metadata_path(path).read_text())
    sidecar["config"]["epochs"] = 90
    sidecar["config"]["alignment"]["lr"] = 0.5
    del sidecar["step"]
    metadata_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(ProvenanceError, match=r"on config\.alignment\.lr, config\.epochs, step \("):
        checkpoint_metadata(path)


def test_swapped_weights_are_refused(tmp_path):
    path = saved_checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["model"]["fc.weight"] = payload["model"]["fc.weight"] + 1e-3  # edited, metadata left as it was
    torch.save(payload, path)
    for reader in (load_checkpoint, checkpoint_metadata):
        with pytest.raises(ProvenanceError, match=r"model\.pt: its weights hash to sha256 .* edited or swapped"):
            reader(path)
    metadata_path(path).unlink()  # the embedded metadata alone is checked the same way
    with pytest.raises(ProvenanceError, match="edited or swapped"):
        load_checkpoint(path)


def test_malformed_sidecar_names_the_file(tmp_path):
    path = saved_checkpoint(tmp_path)
    metadata_path(path).write_text('{"rule": "fa",')
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON .*line 1"):
        load_checkpoint(path)
    metadata_path(path).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model\.json: expected a JSON object"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------
# Plain state_dicts where a checkpoint is expected, and torchvision files


def test_a_plain_state_dict_says_what_it_is_and_how_to_load_it(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18-weights.pth"
    torch.save(state, path)
    expected = (f"{path}: not a neuralign checkpoint: it looks like a plain state_dict ({len(state)} tensors, "
                f"e.g. conv1.weight); load it as torchvision:resnet18={path}")
    for reader in (load_checkpoint, read_checkpoint, checkpoint_metadata):
        with pytest.raises(ValueError) as info:
            reader(path)
        assert str(info.value) == expected
    model, metadata = load_torchvision(path, "resnet18")
    assert (metadata["rule"], metadata["top1"], metadata["top5"]) == ("bp", None, None)  # accuracy unknown
    assert metadata["sha256"] == weights_sha256(state) == weights_sha256(model)
    assert metadata["image_size"] == 224


def test_another_architectures_state_dict_is_named(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"r34\.pth: a state_dict of resnet34, not of 'resnet18'; "
                                         r"load it as torchvision:resnet34="):
        load_torchvision(path, "resnet18")
    odd = tmp_path / "odd.pth"
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, odd)
    with pytest.raises(ValueError, match=r"odd\.pth: not a neuralign checkpoint: .*2 tensors.*fits none"):
        load_checkpoint(odd)
    with pytest.raises(ValueError, match=r"odd\.pth: weights do not fit architecture 'resnet18'.*missing keys"):
        load_torchvision(odd, "resnet18")
    with pytest.raises(ValueError, match="this is a neuralign checkpoint"):
        load_torchvision(saved_checkpoint(tmp_path), "resnet18")
