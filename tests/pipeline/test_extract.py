"""Extraction: hooks, layer lists, Gram-first passes within a memory budget, the opt-in activation file,
cache keys, resume after a kill. Every extraction runs one extra forward on one image to learn the layers'
widths, so forward-call counts below are 1 + the number of batches (per pass)."""
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from pipeline import activation_file
from pipeline.extract import extract
from pipeline.gram import gram
from pipeline.layers import LayerRecorder, UnknownLayerError, resolve_layers
from pipeline.preprocess import Preprocessing, preprocess_images
from pipeline.store import FeatureStore

SIZE = 16  # network input side for every extraction here


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and spinning OpenMP threads starve a shared 2-core box."""
    torch.set_num_threads(1)
    yield


class Stimuli:
    """Stand-in for neural_data.StimulusSet: PNG bytes in memory, ids in order."""

    def __init__(self, n=10, seed=0, size=(20, 14)):
        rng = np.random.default_rng(seed)
        self.data = {}
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
            self.data[f"img{i:03d}"] = buffer.getvalue()
        self.stimulus_ids = list(self.data)

    def __len__(self):
        return len(self.stimulus_ids)

    def open(self, stimulus_id):
        return Image.open(io.BytesIO(self.data[stimulus_id]))

    def image_bytes(self, stimulus_id):
        return self.data[stimulus_id]


class SimulatedKill(Exception):
    """Stands for the process dying mid-extraction."""


class TinyNet(nn.Module):
    """Conv net that counts forward calls and can fail once on a chosen call (a killed run)."""

    def __init__(self, fail_on_call=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 5)
        self.calls = 0
        self.fail_on_call = fail_on_call

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise SimulatedKill(f"forward call {self.calls}")
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


@pytest.fixture(scope="module")
def stimuli():
    return Stimuli()


@pytest.fixture(scope="module")
def resnet():
    """A torchvision ResNet-18 for tests that only read its structure."""
    return resnet18(weights=None)


def tiny_resnet():
    return resnet18(weights=None, num_classes=7).eval()


def run(model, stimuli, cache_dir, **kwargs):
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("batch_size", 4)
    return extract(model, stimuli, device="cpu", cache_dir=cache_dir, progress=False, **kwargs)


def kept(model, stimuli, cache_dir, **kwargs):
    """An extraction that also writes the activations to disk (keep_activations)."""
    return run(model, stimuli, cache_dir, keep_activations=True, **kwargs)


# ----------------------------------------------------------------------------- layer lists


RESNET_DEFAULT = ["relu", "maxpool"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)] + ["avgpool", "fc"]


def test_default_layers_of_resnet18_in_depth_order(resnet):
    assert resolve_layers(resnet) == RESNET_DEFAULT


def test_all_layers_are_the_leaves_in_forward_order(resnet):
    model = resnet
    layers = resolve_layers(model, "all")
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    assert sorted(layers) == sorted(leaves)
    assert layers[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert layers[4:7] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu"]
    assert layers.index("layer1.1.bn2") < layers.index("layer2.0.conv1") < layers.index("layer2.0.downsample.0")
    assert layers[-2:] == ["avgpool", "fc"]


def test_explicit_lists_are_ordered_and_deduplicated(resnet):
    model = resnet
    assert resolve_layers(model, ["fc", "layer2", "layer2.1", "conv1", "fc"]) == ["conv1", "layer2.1", "layer2", "fc"]
    assert resolve_layers(model, "layer3.0.conv2") == ["layer3.0.conv2"]


def test_generic_model_defaults_to_top_level_children():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    assert resolve_layers(model) == ["0", "1", "2", "3"]
    assert resolve_layers(TinyNet()) == ["conv", "relu", "pool", "flatten", "fc"]


def test_unknown_layer_names_its_nearest_matches(resnet):
    with pytest.raises(UnknownLayerError) as error:
        resolve_layers(resnet, ["layer5.0", "fc", "avgpol"])
    message = str(error.value)
    assert "'layer5.0' (nearest: layer4.0" in message and "'avgpol' (nearest: avgpool" in message
    assert "Valid names" in message and "first 20: conv1, bn1, relu, maxpool, layer1" in message
    assert "layer4.1.bn2" not in message  # the list of every module is cut
    assert isinstance(error.value, LookupError)


def test_forward_order_follows_the_forward_pass_not_registration():
    class Backwards(nn.Module):  # registers the head first, runs it last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.body = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten())

        def forward(self, x):
            return self.head(self.body(x))

    model = Backwards()
    assert resolve_layers(model) == ["head", "body"]  # structure alone cannot know
    assert resolve_layers(model, example_input=SIZE) == ["body", "head"]
    assert resolve_layers(model, "all", example_input=torch.zeros(2, 3, SIZE, SIZE)) == [
        "body.0", "body.1", "body.2", "head"]


def test_project_resnet_with_real_stimulus_set(tmp_path):
    """models.resnet18 registers maxpool before bn1/relu; extraction still records forward order."""
    import models
    import pandas as pd
    from neural_data import FolderImages, StimulusSet

    rng = np.random.default_rng(3)
    ids = [f"stim{i}" for i in range(6)]
    for i, stimulus_id in enumerate(ids):
        shape = (18, 22) if i % 2 else (18, 22, 3)  # gray and colour files
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"{stimulus_id}.png")
    stimuli = StimulusSet(pd.DataFrame({"stimulus_id": ids}), FolderImages(tmp_path))
    model = models.resnet18(width=0.25, num_classes=10)
    assert resolve_layers(model, example_input=SIZE) == RESNET_DEFAULT
    store = kept(model, stimuli, tmp_path / "cache")
    assert store.layers == RESNET_DEFAULT and store.stimulus_ids == ids
    assert store.metadata["layers"] == RESNET_DEFAULT
    x = preprocess_images([stimuli.open(s) for s in ids], Preprocessing(image_size=SIZE))
    with LayerRecorder(model.eval(), store.layers) as recorder, torch.no_grad():
        model(x)
    for layer in store.layers:
        np.testing.assert_allclose(store.features(layer)[()], recorder.outputs[layer].numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- hooks


def test_hooks_capture_exactly_the_module_outputs():
    model = tiny_resnet()
    x = torch.randn(3, 3, SIZE, SIZE)
    layers = ["bn1", "relu", "maxpool", "layer1.0", "layer2.1", "avgpool", "fc"]
    with LayerRecorder(model, layers) as recorder, torch.no_grad():
        model(x)
    with torch.no_grad():  # the same network by hand; torchvision's relu is in place, hence the clones
        manual = {"bn1": model.bn1(model.conv1(x)).clone()}
        manual["relu"] = torch.relu(manual["bn1"])
        manual["maxpool"] = model.maxpool(manual["relu"])
        manual["layer1.0"] = model.layer1[0](manual["maxpool"].clone())
        h = model.layer2(model.layer1[1](manual["layer1.0"].clone()))
        manual["layer2.1"] = h.clone()
        manual["avgpool"] = model.avgpool(model.layer4(model.layer3(h)))
        manual["fc"] = model.fc(manual["avgpool"].flatten(1))
    assert (manual["bn1"] < 0).any(), "bn1 must be recorded before the in-place ReLU"
    for layer in layers:
        assert torch.equal(recorder.outputs[layer], manual[layer].reshape(3, -1)), layer


# ----------------------------------------------------------------------------------- store


def test_store_equals_in_memory_extraction_and_restores_modes(stimuli, tmp_path):
    model = tiny_resnet().train()
    store = kept(model, stimuli, tmp_path, batch_size=3)
    assert all(m.training for m in model.modules()), "training mode must be restored"
    assert store.layers == RESNET_DEFAULT and store.stimulus_ids == stimuli.stimulus_ids
    images = [stimuli.open(s) for s in stimuli.stimulus_ids]
    x = preprocess_images(images, Preprocessing(image_size=SIZE))
    model.eval()
    with LayerRecorder(model, store.layers) as recorder, torch.no_grad():
        model(x)
    for layer in store.layers:
        assert store.shape(layer) == (10, recorder.outputs[layer].shape[1])
        np.testing.assert_allclose(store.features(layer)[()], recorder.outputs[layer].numpy(), rtol=1e-5, atol=1e-6)
    assert store.metadata["preprocessing"]["image_size"] == SIZE
    assert (tmp_path / f"{store.key}.json").exists() and not list(tmp_path.glob("*.partial"))
    assert store.metadata["activations_kept"] is True


def test_gram_is_x_xt_in_float64(stimuli, tmp_path):
    store = kept(tiny_resnet(), stimuli, tmp_path)
    for layer in ["relu", "layer3.0", "fc"]:
        x = store.features(layer)[()].astype(np.float64)
        reference = x @ x.T
        stored = store.gram(layer, device="cpu")
        assert stored.dtype == np.float64 and stored.shape == (10, 10)
        assert np.linalg.norm(stored - reference) <= 1e-10 * np.linalg.norm(reference)
    # Many narrow panels (a few columns each) must add up to the same matrix.
    dataset = store.features("relu")
    x = dataset[()].astype(np.float64)
    panels = gram(dataset, device="cpu", panel_bytes=10 * 4 * 3)
    assert np.linalg.norm(panels - x @ x.T) <= 1e-10 * np.linalg.norm(x @ x.T)


def test_gram_is_cached_and_subset_by_rows(stimuli, tmp_path, monkeypatch):
    model = tiny_resnet()
    store = run(model, stimuli, tmp_path)
    full = store.gram("layer4.1", device="cpu")
    assert store.gram_path("layer4.1").name == f"{store.key}.layer4.1.gram.npy"

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached Gram matrix should have been read")

    monkeypatch.setattr("pipeline.extract.run_pass", no_recompute)
    monkeypatch.setattr("pipeline.extract.features_gram", no_recompute)
    assert np.array_equal(run(model, stimuli, tmp_path).gram("layer4.1"), full)
    ids = ["img007", "img002"]
    assert np.array_equal(store.gram("layer4.1", rows=ids), full[np.ix_([7, 2], [7, 2])])
    assert np.array_equal(store.gram("layer4.1", rows=[7, 2]), full[np.ix_([7, 2], [7, 2])])
    with pytest.raises(LookupError, match="nope"):
        store.gram("nope")


def test_memory_is_bounded_by_the_batch(stimuli, tmp_path, monkeypatch):
    written_rows, forward_rows = [], []
    real_write = activation_file._write_batch

    def spy(f, rows, outputs, batch_size):
        written_rows.extend(v.shape[0] for v in outputs.values())
        return real_write(f, rows, outputs, batch_size)

    monkeypatch.setattr(activation_file, "_write_batch", spy)
    model = tiny_resnet()
    model.register_forward_pre_hook(lambda module, args: forward_rows.append(args[0].shape[0]))
    store = kept(model, stimuli, tmp_path, batch_size=4)
    assert forward_rows == [1, 4, 4, 2] and max(written_rows) == 4  # 1: the width probe
    assert all(store.features(layer).chunks[0] <= 4 for layer in store.layers)
    assert store.metadata["batch_size"] == 4


def test_store_pickles_by_path(stimuli, tmp_path):
    store = kept(TinyNet(), stimuli, tmp_path)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.key == store.key and np.array_equal(clone.features("fc")[()], store.features("fc")[()])


# ------------------------------------------------------------------------------ cache keys


def test_cache_key_tracks_every_input_and_reuses_unchanged(stimuli, tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    base = run(model, stimuli, tmp_path)
    assert model.calls == 4

    again = run(model, stimuli, tmp_path)
    assert again.key == base.key and model.calls == 4, "unchanged inputs must reuse the store"

    changed_weight = TinyNet()
    changed_weight.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed_weight.fc.bias[2] += 1e-6
    changed_stimulus = Stimuli()
    changed_stimulus.data["img004"] = Stimuli(n=5, seed=9).data["img004"]
    renamed = Stimuli()
    renamed.stimulus_ids = renamed.stimulus_ids[::-1]
    keys = {
        "base": base.key,
        "weight": run(changed_weight, stimuli, tmp_path).key,
        "stimulus": run(model, changed_stimulus, tmp_path).key,
        "order": run(model, renamed, tmp_path).key,
        "size": run(model, stimuli, tmp_path, image_size=SIZE + 2).key,
        "mean": run(model, stimuli, tmp_path, preprocessing=Preprocessing(SIZE, mean=(0.5, 0.5, 0.5))).key,
        "layers": run(model, stimuli, tmp_path, layers=["conv", "fc"]).key,
    }
    assert len(set(keys.values())) == len(keys), keys
    assert changed_weight.calls == 4, "a changed weight must recompute, never reuse"


def test_changed_checkpoint_never_reuses_stale_activations(stimuli, tmp_path):
    model = TinyNet()
    before = kept(model, stimuli, tmp_path).features("fc")[()]
    with torch.no_grad():
        model.conv.weight.mul_(2)
    after_store = kept(model, stimuli, tmp_path)
    assert model.calls == 8
    assert not np.allclose(after_store.features("fc")[()], before)
    assert len(list(tmp_path.glob("*.h5"))) == 2


# ------------------------------------------------------------------------- resume, determinism


def test_killed_extraction_resumes_without_redoing_batches(tmp_path):
    stimuli = Stimuli(n=10)  # batches of 3: rows [0-2] [3-5] [6-8] [9]
    reference = kept(TinyNet(), stimuli, tmp_path / "uninterrupted", batch_size=3)

    torch.manual_seed(0)
    model = TinyNet(fail_on_call=4)  # dies on the third batch, after the width probe and two batches
    with pytest.raises(SimulatedKill):
        kept(model, stimuli, tmp_path / "killed", batch_size=3)
    assert list((tmp_path / "killed").glob("*.h5.partial")) and not list((tmp_path / "killed").glob("*.h5"))

    model.calls, model.fail_on_call = 0, None
    resumed = kept(model, stimuli, tmp_path / "killed", batch_size=3)
    assert model.calls == 1 + 2, "only the third and fourth batches may run again"
    assert resumed.key == reference.key
    for layer in reference.layers:
        assert np.array_equal(resumed.features(layer)[()], reference.features(layer)[()]), layer


def test_resume_keeps_the_batch_size_of_the_partial_file(tmp_path):
    stimuli = Stimuli(n=10)
    model = TinyNet(fail_on_call=3)
    with pytest.raises(SimulatedKill):
        kept(model, stimuli, tmp_path, batch_size=4)
    model.calls, model.fail_on_call = 0, None
    store = kept(model, stimuli, tmp_path, batch_size=2)
    assert model.calls == 1 + 2  # the file's batches of 4: the second and the third
    assert FeatureStore(store.path).has_activations


def test_unreadable_partial_file_is_started_again(stimuli, tmp_path):
    clean_model = TinyNet()
    reference = kept(clean_model, stimuli, tmp_path / "clean")
    (tmp_path / "dirty").mkdir()
    (tmp_path / "dirty" / f"{reference.key}.h5.partial").write_bytes(b"not an HDF5 file")
    model = TinyNet()
    model.load_state_dict(clean_model.state_dict())
    store = kept(model, stimuli, tmp_path / "dirty")
    assert store.key == reference.key and model.calls == 4
    assert np.array_equal(store.features("fc")[()], reference.features("fc")[()])
    assert not list((tmp_path / "dirty").glob("*.partial"))


def test_reruns_are_identical(stimuli, tmp_path):
    first = kept(tiny_resnet(), stimuli, tmp_path / "a")
    torch.manual_seed(0)
    second = kept(tiny_resnet(), stimuli, tmp_path / "b")
    assert first.key == second.key
    for layer in first.layers:
        assert np.array_equal(first.features(layer)[()], second.features(layer)[()])
    assert np.array_equal(first.gram("layer2.0", device="cpu"), second.gram("layer2.0", device="cpu"))


def test_bad_inputs_are_named(stimuli, tmp_path):
    with pytest.raises(ValueError, match="stimulus set has no stimulus_ids"):
        run(TinyNet(), Stimuli(n=0), tmp_path)
    with pytest.raises(UnknownLayerError, match="nearest: fc"):
        run(TinyNet(), stimuli, tmp_path, layers=["fc1"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        FeatureStore(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="memory_budget"):
        run(TinyNet(), stimuli, tmp_path, memory_budget=0)
    with pytest.raises(LookupError, match="activations were not kept"):
        run(TinyNet(), stimuli, tmp_path).features("fc")
    diverged = TinyNet()
    with torch.no_grad():
        diverged.fc.weight[0, 0] = float("nan")
    for extraction in (run, kept):
        with pytest.raises(ValueError, match="NaN or inf activations at layer fc"):
            extraction(diverged, stimuli, tmp_path / extraction.__name__)


# ------------------------------------------------------------------------------- Gram-first passes


def test_gram_first_equals_the_activation_file_path(stimuli, tmp_path):
    model = tiny_resnet()
    in_memory = run(model, stimuli, tmp_path / "memory")
    on_disk = kept(model, stimuli, tmp_path / "disk")
    assert in_memory.key == on_disk.key and in_memory.layers == on_disk.layers == RESNET_DEFAULT
    assert not in_memory.has_activations and not list((tmp_path / "memory").glob("*.h5*"))
    assert in_memory.metadata["forward_passes"] == 1
    for layer in in_memory.layers:
        a, b = in_memory.gram(layer), on_disk.gram(layer)
        assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max(), layer
        x = on_disk.features(layer)[()].astype(np.float64)
        assert np.abs(a - x @ x.T).max() <= 1e-12 * np.abs(x @ x.T).max(), layer


def test_a_tiny_budget_splits_layers_over_several_passes_with_the_same_grams(stimuli, tmp_path):
    from pipeline.passes import plan_passes

    model = tiny_resnet()
    whole = run(model, stimuli, tmp_path / "whole")
    budget = 4 * 10 * 300 + 2 * 10 * 10 * 8 + 2 * 256 * 2**20  # 300 float32 columns of 10 stimuli per pass
    widths = {layer: whole.shape(layer)[1] for layer in whole.layers}
    passes = plan_passes(widths, 10, budget)
    assert all(sum(piece.width for piece in slices) <= 300 for slices in passes)
    assert len(passes) == -(-sum(widths.values()) // 300)
    split_layers = {piece.layer for slices in passes for piece in slices if piece.width < widths[piece.layer]}
    assert "relu" in split_layers  # relu holds 1024 columns at 16 px: more than one pass
    calls = []
    model.fc.register_forward_hook(lambda *args: calls.append(1))
    sliced = run(model, stimuli, tmp_path / "sliced", memory_budget=budget)
    assert sliced.metadata["forward_passes"] == len(passes)
    assert len(calls) < len(passes) * 3 + 1  # passes without fc stop before it (and the width probe runs it)
    for layer in whole.layers:
        assert np.abs(sliced.gram(layer) - whole.gram(layer)).max() <= 1e-12 * np.abs(whole.gram(layer)).max()


def test_a_killed_gram_first_extraction_resumes_with_the_layers_it_had_not_finished(tmp_path):
    stimuli = Stimuli(n=10)
    budget = 4 * 10 * 600 + 2 * 10 * 10 * 8 + 2 * 256 * 2**20  # 600 columns per pass: conv and relu have 1024
    reference = run(TinyNet(), stimuli, tmp_path / "uninterrupted", batch_size=5, memory_budget=budget)
    passes = reference.metadata["forward_passes"]
    assert passes == 4

    torch.manual_seed(0)
    model = TinyNet(fail_on_call=1 + 2 * 2 + 1)  # the width probe, two passes of 2 batches (conv done), dies
    with pytest.raises(SimulatedKill):
        run(model, stimuli, tmp_path / "killed", batch_size=5, memory_budget=budget)
    finished = list((tmp_path / "killed").glob("*.gram.npy"))
    assert finished and not list((tmp_path / "killed").glob("*.json"))
    model.calls, model.fail_on_call = 0, None
    resumed = run(model, stimuli, tmp_path / "killed", batch_size=5, memory_budget=budget)
    assert model.calls == 1 + 2 * 2, "conv, finished before the kill, must not be extracted again"
    for layer in reference.layers:
        np.testing.assert_allclose(resumed.gram(layer), reference.gram(layer), rtol=1e-12, atol=0)


def test_gram_first_reruns_are_byte_identical_and_activations_can_be_added_later(stimuli, tmp_path):
    first = run(tiny_resnet(), stimuli, tmp_path / "a")
    torch.manual_seed(0)
    second = run(tiny_resnet(), stimuli, tmp_path / "b")
    for layer in first.layers:
        assert first.gram_path(layer).read_bytes() == second.gram_path(layer).read_bytes()
    torch.manual_seed(0)
    later = kept(tiny_resnet(), stimuli, tmp_path / "a")  # same key, now with the activations
    assert later.key == first.key and later.has_activations and not later.reused
    assert later.features("fc").shape == (10, 7)


def test_import_pipeline_is_cheap():
    code = "import sys, pipeline; assert not {'torch', 'prefect', 'h5py', 'models'} & set(sys.modules), sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
