"""The folder format, the registry (decorator and entry points) and the `neuralign datasets` commands."""
import importlib.metadata
import types

import numpy as np
import pandas as pd
import pytest

import neural_data
from neural_data import DatasetError, DatasetValidationError, UnknownDatasetError, check_folder, registry
from neural_data.loaders import load_folder
from nd_fixtures import site_table, trial_responses, write_folder_dataset


@pytest.mark.parametrize("responses", ["npy", "h5", "nc"])
def test_folder_dataset_loads_from_each_response_format(tmp_path, responses):
    root = write_folder_dataset(tmp_path / "d", responses=responses)
    dataset = neural_data.load(str(root))
    array = trial_responses(len(site_table()), 12, 3)
    array[0, 1, 2] = np.nan
    assert dataset.name == "tiny" and dataset.citation == "test" and dataset.regions == ["V4", "IT"]
    assert dataset.assembly.dims == ("presentation", "neuroid")
    np.testing.assert_allclose(dataset.averaged().values, np.nanmean(array, axis=2).T, rtol=1e-6, atol=1e-6)
    assert list(dataset.averaged()["stimulus_id"].values) == dataset.stimuli.stimulus_ids
    assert dataset.time_window_ms == (70, 170)
    assert dataset.stimuli.open(dataset.stimuli.stimulus_ids[3]).size == (8, 8)


def test_folder_dataset_with_zip_images_and_id_column(tmp_path):
    root = write_folder_dataset(tmp_path / "d", images="zip")
    table = pd.read_csv(root / "stimuli.csv").rename(columns={"stimulus_id": "image_id"})
    table.to_csv(root / "stimuli.csv", index=False)
    text = (root / "dataset.toml").read_text() + 'stimulus_id_column = "image_id"\n'
    (root / "dataset.toml").write_text(text)
    dataset = load_folder(root)
    assert dataset.stimuli.stimulus_ids == table["image_id"].tolist()
    assert dataset.stimuli.missing_images() == []


def test_npy_repeats_that_are_all_nan_are_dropped(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    array = np.load(root / "responses.npy")
    array[:, 0, 2] = np.nan  # stimulus 0 was shown only twice
    np.save(root / "responses.npy", array)
    dataset = load_folder(root)
    first = dataset.stimuli.stimulus_ids[0]
    assert (dataset.assembly["stimulus_id"].values == first).sum() == 2


def test_check_reports_problems_of_a_broken_folder(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    clean = check_folder(root)
    assert clean.ok and clean.problems == [] and clean.warnings == [] and clean.dataset.name == "tiny"
    (root / "images" / "img1002.png").unlink()
    neuroids = pd.read_csv(root / "neuroids.csv")
    neuroids.loc[1, "neuroid_id"] = neuroids.loc[0, "neuroid_id"]
    neuroids.to_csv(root / "neuroids.csv", index=False)
    broken = check_folder(root)
    assert not broken.ok and broken.dataset is None and len(broken.problems) == 2
    assert any("img1002" in p for p in broken.problems)
    assert any("duplicate neuroid_id values: 1 site id: Chabo_L_P_0_0" in p for p in broken.problems)
    with pytest.raises(DatasetValidationError, match=str(root)):
        load_folder(root)


@pytest.mark.parametrize("edit, message", [
    (lambda root: (root / "neuroids.csv").write_text("neuroid_id\na\n"), "neuroids.csv: missing column 'region'"),
    (lambda root: (root / "dataset.toml").write_text('name = "x"\nregoins = ["IT"]\n'),
     "dataset.toml: unknown key 'regoins' (did you mean 'regions'?)"),
    (lambda root: (root / "dataset.toml").write_text('citation = "x"\n'), "dataset.toml: missing key 'name'"),
    (lambda root: np.save(root / "responses.npy", np.zeros((7, 5))), "has 12 rows"),
    (lambda root: np.save(root / "responses.npy", np.zeros(7)), "expected (neuroid, stimulus)"),
])
def test_malformed_files_get_errors_naming_file_and_field(tmp_path, edit, message):
    root = write_folder_dataset(tmp_path / "d")
    edit(root)
    with pytest.raises(DatasetError) as info:
        load_folder(root)
    assert message in str(info.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.toml: not found"):
        load_folder(tmp_path)
    root = write_folder_dataset(tmp_path / "d")
    (root / "responses.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no responses file"):
        load_folder(root)


def test_register_decorator_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
    root = write_folder_dataset(tmp_path / "d")

    @neural_data.register("TinyLab2024")
    def tiny(**kwargs):
        """A tiny test dataset."""
        return load_folder(root, **kwargs)

    assert "TinyLab2024" in neural_data.list_datasets()
    assert neural_data.describe("TinyLab2024") == "A tiny test dataset."
    assert neural_data.load("TinyLab2024").name == "tiny"
    with pytest.raises(ValueError, match="already registered"):
        neural_data.register("TinyLab2024")(lambda: None)
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'NoSuch'.*MajajHong2015"):
        neural_data.load("NoSuch")
    assert isinstance(UnknownDatasetError("x"), LookupError)


def test_entry_point_datasets_are_listed_and_loaded(tmp_path, monkeypatch):
    root = write_folder_dataset(tmp_path / "d")
    plugin = types.ModuleType("fake_lab_plugin")
    plugin.load_it = lambda **kwargs: load_folder(root)
    monkeypatch.setitem(__import__("sys").modules, "fake_lab_plugin", plugin)
    entry = importlib.metadata.EntryPoint(name="PluginLab2025", value="fake_lab_plugin:load_it",
                                          group="neuralign.datasets")
    real = importlib.metadata.entry_points

    def fake_entry_points(**params):
        if params.get("group") == "neuralign.datasets":
            return importlib.metadata.EntryPoints([entry])
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_READ", False)
    assert "PluginLab2025" in neural_data.list_datasets()
    assert neural_data.load("PluginLab2025").source == str(root)


def test_cli_check_synth_and_list(tmp_path, monkeypatch, capsys):
    from flows import cli

    root = write_folder_dataset(tmp_path / "d")
    assert cli.main(["datasets", "check", str(root)]) == 0
    assert "ok" in capsys.readouterr().out
    (root / "images" / "img0001.png").unlink()
    assert cli.main(["datasets", "check", str(root)]) == 1
    output = capsys.readouterr().out
    assert "img0001" in output and "1 problem" in output

    out = tmp_path / "syn"
    assert cli.main(["datasets", "synth", "--out", str(out), "--images", "32", "--sites", "6", "--reps", "2",
                     "--image-size", "16", "--seed", "3"]) == 0
    assert "true noise ceiling" in capsys.readouterr().out
    assert neural_data.load(str(out)).summary() == "32 images; sites: V4 2, IT 4; repetitions: 2"
    assert cli.main(["datasets", "synth", "--out", str(out)]) == 2  # exists: a clear error, no traceback
    assert "not empty" in capsys.readouterr().err

    monkeypatch.delenv("NEURALIGN_MAJAJHONG2015", raising=False)
    monkeypatch.setenv("NEURALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("neural_data.datasets.synth.cached", lambda **kw: out)  # keep the test fast
    assert cli.main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "MajajHong2015.public:" in listing and "data not available here" in listing
    assert "synthetic:" in listing and "32 images; sites: V4 2, IT 4; repetitions: 2" in listing
