"""The common schema: averaging, stimulus sets, and one validation test per kind of problem."""
import zipfile

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

import neural_data
from neural_data import ArrayImages, DatasetValidationError, FolderImages, StimulusSet, ZipImages
from neural_data.schema import make_assembly
from nd_fixtures import site_table, stimulus_table, trial_responses, write_images, write_zip


@pytest.fixture()
def pair(tmp_path):
    """A valid (trial assembly, stimulus set): 3 categories x 4 images, 7 sites, 3 repetitions."""
    table = stimulus_table(4).rename(columns={"image_id": "stimulus_id"})
    write_images(tmp_path / "images", table["stimulus_id"])
    stimuli = StimulusSet(table, FolderImages(tmp_path / "images"), source="stimuli.csv")
    sites = site_table()
    array = trial_responses(len(sites), len(table), reps=3)
    trials = array.transpose(1, 2, 0).reshape(-1, len(sites))
    assembly = make_assembly(trials, np.repeat(table["stimulus_id"], 3), np.tile(np.arange(3), len(table)),
                             sites, table)
    return assembly, stimuli, array


def problems(assembly, stimuli, **options):
    with pytest.raises(DatasetValidationError) as info:
        neural_data.validate(assembly, stimuli, source="my/dataset", **options)
    message = str(info.value)
    assert message.startswith("my/dataset:"), "the error must name the file"
    return message


def test_valid_pair_passes_and_has_the_schema(pair):
    assembly, stimuli, _ = pair
    neural_data.validate(assembly, stimuli, source="ok")
    assert assembly.dims == ("presentation", "neuroid")
    for name in ("stimulus_id", "repetition", "object_name", "category_name", "variation"):
        assert assembly[name].dims == ("presentation",)
    for name in ("neuroid_id", "region", "animal", "arr"):
        assert assembly[name].dims == ("neuroid",)


def test_averaged_is_the_nan_aware_mean_in_stimulus_order(pair):
    assembly, stimuli, array = pair
    assembly = assembly.copy()
    assembly.values[0, 0] = np.nan  # stimulus 0, repetition 0, site 0 missing
    order = list(reversed(stimuli.stimulus_ids))
    averaged = neural_data.average_repetitions(assembly, order, stimuli.table)
    expected = np.nanmean(np.where(np.isnan(assembly.values.reshape(len(order), 3, -1)), np.nan,
                                   array.transpose(1, 2, 0)), axis=1)[::-1]
    np.testing.assert_allclose(averaged.values, expected, rtol=1e-6)
    assert list(averaged["stimulus_id"].values) == order
    assert list(averaged["category_name"].values) == list(stimuli.table.set_index("stimulus_id").loc[order, "category_name"])
    assert "repetition" not in averaged.coords


def test_averaged_gives_nan_only_where_every_repeat_is_missing(pair):
    assembly, stimuli, _ = pair
    assembly = assembly.copy()
    assembly.values[0:3, 2] = np.nan  # all three repeats of stimulus 0 at site 2
    averaged = neural_data.average_repetitions(assembly, stimuli.stimulus_ids)
    assert np.isnan(averaged.values[0, 2]) and np.isfinite(np.delete(averaged.values.ravel(), 2)).all()


def test_missing_coord_is_named(pair):
    assembly, stimuli, _ = pair
    message = problems(assembly.drop_vars("region"), stimuli)
    assert "missing neuroid coord 'region'" in message


def test_missing_repetition_coord_is_named(pair):
    assembly, stimuli, _ = pair
    assert "missing presentation coord 'repetition'" in problems(assembly.drop_vars("repetition"), stimuli)


def test_duplicate_neuroid_ids(pair):
    assembly, stimuli, _ = pair
    ids = assembly["neuroid_id"].values.copy()
    ids[1] = ids[0]
    message = problems(assembly.assign_coords(neuroid_id=("neuroid", ids)), stimuli)
    assert "duplicate neuroid_id" in message and ids[0] in message


def test_duplicate_presentations(pair):
    assembly, stimuli, _ = pair
    reps = assembly["repetition"].values.copy()
    reps[1] = reps[0]
    assert "duplicate (stimulus_id, repetition)" in problems(assembly.assign_coords(repetition=("presentation", reps)), stimuli)


def test_duplicate_stimulus_ids_in_table(pair, tmp_path):
    assembly, stimuli, _ = pair
    table = pd.concat([stimuli.table, stimuli.table.iloc[:1]], ignore_index=True)
    message = problems(assembly, StimulusSet(table, stimuli.sources))
    assert "column 'stimulus_id' has duplicates" in message


def test_responses_to_unlisted_stimuli(pair):
    assembly, stimuli, _ = pair
    smaller = stimuli.subset(stimuli.stimulus_ids[1:])
    message = problems(assembly, smaller, min_per_category=3)
    assert "missing from the stimulus table" in message and stimuli.stimulus_ids[0] in message


def test_stimuli_without_responses(pair):
    assembly, stimuli, _ = pair
    first = stimuli.stimulus_ids[0]
    keep = np.flatnonzero(assembly["stimulus_id"].values != first)
    message = problems(assembly.isel(presentation=keep), stimuli)
    assert "have no responses" in message and first in message


def test_stimuli_without_images(pair, tmp_path):
    assembly, stimuli, _ = pair
    missing = stimuli.stimulus_ids[5]
    (tmp_path / "images" / f"{missing}.png").unlink()
    rebuilt = StimulusSet(stimuli.table, FolderImages(tmp_path / "images"))
    message = problems(assembly, rebuilt)
    assert "have no image in" in message and missing in message and str(tmp_path / "images") in message


def test_all_nan_site(pair):
    assembly, stimuli, _ = pair
    assembly = assembly.copy()
    assembly.values[:, 3] = np.nan
    message = problems(assembly, stimuli)
    assert "only NaN responses" in message and assembly["neuroid_id"].values[3] in message


def test_wrong_dims(pair):
    assembly, stimuli, _ = pair
    message = problems(assembly.rename(presentation="trial"), stimuli)
    assert "expected ('presentation', 'neuroid')" in message
    message = problems(assembly.expand_dims(time_bin=1), stimuli)
    assert "dims ('time_bin', 'presentation', 'neuroid')" in message


def test_too_few_images_per_category_with_adjustable_minimum(pair):
    assembly, stimuli, _ = pair  # 4 images per category
    neural_data.validate(assembly, stimuli, min_per_category=4)
    message = problems(assembly, stimuli, min_per_category=5)
    assert "fewer than 5 images" in message and "Animals: 4" in message
    message = problems(assembly, stimuli, stratify_by="no_such_column")
    assert "no column 'no_such_column'" in message


def test_every_problem_is_reported_at_once(pair):
    assembly, stimuli, _ = pair
    broken = assembly.drop_vars("region").copy()
    broken.values[:, 0] = np.nan
    error = pytest.raises(DatasetValidationError, neural_data.validate, broken, stimuli, source="x")
    assert len(error.value.problems) == 2
    assert isinstance(error.value, ValueError)


def test_stimulus_sets_read_folder_zip_and_array_alike(tmp_path):
    ids = ["a", "b", "c"]
    write_images(tmp_path / "folder", ids)
    write_zip(tmp_path / "images.zip", ids)
    pixels = np.stack([np.asarray(Image.open(tmp_path / "folder" / f"{i}.png")) for i in ids])
    table = pd.DataFrame({"stimulus_id": ids})
    sets = [StimulusSet(table, FolderImages(tmp_path / "folder")), StimulusSet(table, ZipImages(tmp_path / "images.zip")),
            StimulusSet(table, ArrayImages(ids, array=pixels))]
    for stimulus_set in sets:
        assert len(stimulus_set) == 3 and stimulus_set.stimulus_ids == ids
        for index, sid in enumerate(ids):
            np.testing.assert_array_equal(np.asarray(stimulus_set.open(sid)), pixels[index])
        assert stimulus_set.missing_images() == []
    assert sets[0].image_bytes("b") == (tmp_path / "folder" / "b.png").read_bytes()
    with zipfile.ZipFile(tmp_path / "images.zip") as handle:
        assert sets[1].image_bytes("c") == handle.read("hvm/c.png")
    with pytest.raises(FileNotFoundError, match="no image for stimulus 'zzz'"):
        sets[0].image_bytes("zzz")


def test_float_image_arrays_are_scaled_to_uint8():
    array = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
    image = StimulusSet(pd.DataFrame({"stimulus_id": ["x"]}), ArrayImages(["x"], array=array)).open("x")
    values = np.asarray(image)
    assert values.dtype == np.uint8 and values.min() == 0 and values.max() == 255


def test_stimulus_table_needs_an_id_column():
    with pytest.raises(neural_data.DatasetError, match="no 'stimulus_id' column"):
        StimulusSet(pd.DataFrame({"name": ["a"]}), source="s.csv")


def test_identifier_changes_with_content(pair):
    assembly, stimuli, _ = pair
    first = neural_data.NeuralDataset(name="t", assembly=assembly, stimuli=stimuli)
    again = neural_data.NeuralDataset(name="t", assembly=assembly.copy(), stimuli=stimuli)
    changed = assembly.copy()
    changed.values[0, 0] += 1.0
    other = neural_data.NeuralDataset(name="t", assembly=changed, stimuli=stimuli)
    assert first.identifier == again.identifier != other.identifier
    assert first.identifier.startswith("t-")
    assert first.regions == ["V4", "IT"]
    assert isinstance(first.averaged(), xr.DataArray) and first.averaged().shape == (12, 7)


def test_stimulus_sets_survive_pickling_after_use(tmp_path):
    """Datasets travel to worker processes (Dask): an open zip handle must not be pickled."""
    import pickle

    ids = ["a", "b"]
    write_zip(tmp_path / "images.zip", ids)
    stimulus_set = StimulusSet(pd.DataFrame({"stimulus_id": ids}), ZipImages(tmp_path / "images.zip"))
    before = stimulus_set.image_bytes("a")
    copy = pickle.loads(pickle.dumps(stimulus_set))
    assert copy.image_bytes("a") == before and copy.stimulus_ids == ids
