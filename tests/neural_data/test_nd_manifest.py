"""dataset.toml as a typed model: every key's type is checked, and each message names the file and the key."""
import pytest

import neural_data
from neural_data import DatasetManifest, DatasetValidationError, check_folder, read_manifest
from neural_data.loaders import load_folder
from nd_fixtures import write_folder_dataset

VALID = 'name = "tiny"\ncitation = "test"\nregions = ["V4", "IT"]\ntime_window_ms = [70, 170]\n'


def manifest_error(tmp_path, text: str) -> DatasetValidationError:
    root = write_folder_dataset(tmp_path / "d")
    (root / "dataset.toml").write_text(text)
    with pytest.raises(DatasetValidationError) as info:
        load_folder(root)
    assert str(info.value).startswith(str(root / "dataset.toml")), "the error must name the file"
    return info.value


def test_defaults_of_a_minimal_manifest(tmp_path):
    (tmp_path / "dataset.toml").write_text('name = "x"\n')
    manifest = read_manifest(tmp_path)
    assert manifest == DatasetManifest(name="x")
    assert (manifest.stratify_by, manifest.stratify_column) == ("category_name", "category_name")
    assert (manifest.stimulus_id_column, manifest.stimuli, manifest.neuroids) == ("stimulus_id", "stimuli.csv",
                                                                                  "neuroids.csv")
    assert manifest.regions == [] and manifest.time_window is None and manifest.min_per_category == 4
    assert manifest.responses is None and manifest.images is None


def test_every_key_is_read(tmp_path):
    (tmp_path / "dataset.toml").write_text(
        'name = "Lab"\ncitation = "c"\ndescription = "d"\nstimulus_id_column = "image_id"\nstratify_by = "none"\n'
        'regions = ["IT"]\ntime_window_ms = [70.5, 170]\nresponses = "r.h5"\nimages = "pics.zip"\n'
        'stimuli = "s.csv"\nneuroids = "n.csv"\nmin_per_category = 2\n')
    manifest = read_manifest(tmp_path)
    assert manifest.stratify_column is None and manifest.time_window == (70.5, 170)
    assert (manifest.responses, manifest.images, manifest.stimuli, manifest.neuroids) == ("r.h5", "pics.zip",
                                                                                          "s.csv", "n.csv")
    assert manifest.validation_options() == {"stratify_by": None, "regions": ["IT"], "min_per_category": 2}


def test_regions_as_one_string_says_a_list_is_expected(tmp_path):
    error = manifest_error(tmp_path, VALID.replace('["V4", "IT"]', '"V4,IT"'))
    assert error.problems == ['key \'regions\' must be a list of strings like ["V4", "IT"]; got "V4,IT"']
    assert "declared regions" not in str(error)  # the old message split the string into letters


@pytest.mark.parametrize("line, key, expected", [
    ('name = 5', "name", 'the dataset\'s name, a string like "MyLab2024"; got 5'),
    ('name = ""', "name", "the dataset's name"),
    ('stratify_by = 3', "stratify_by", 'or "none" for plain random splits; got 3'),
    ('time_window_ms = [70]', "time_window_ms", ("[start, end] in ms, two numbers with start < end, like [70, 170]; "
                                                 "got [70]")),
    ('time_window_ms = ["70", "170"]', "time_window_ms", 'got ["70", "170"]'),
    ('time_window_ms = [170, 70]', "time_window_ms", "start < end"),
    ('time_window_ms = 70', "time_window_ms", "got 70"),
    ('regions = ["V4", 4]', "regions", 'a list of strings like ["V4", "IT"]; got ["V4", 4]'),
    ('min_per_category = 1', "min_per_category", "a whole number of images of at least 2, like 4; got 1"),
    ('min_per_category = "4"', "min_per_category", 'got "4"'),
    ('min_per_category = 4.0', "min_per_category", "got 4.0"),
    ('min_per_category = true', "min_per_category", "got true"),
    ('images = ["a.zip"]', "images", 'a file name inside the dataset folder, a string like "images.zip"'),
    ('responses = 1', "responses", 'a string like "responses.npy"; got 1'),
])
def test_a_key_of_the_wrong_type_is_named_with_what_was_expected(tmp_path, line, key, expected):
    text = "\n".join(row for row in VALID.splitlines() if not row.startswith(line.split(" = ")[0] + " "))
    error = manifest_error(tmp_path, text + "\n" + line + "\n")
    assert len(error.problems) == 1, error.problems
    assert error.problems[0].startswith(f"key '{key}' must be ") and expected in error.problems[0]


def test_unknown_keys_and_a_missing_name_are_all_reported_at_once(tmp_path):
    error = manifest_error(tmp_path, 'regoins = ["IT"]\ncolour = "red"\nregions = "IT"\n')
    assert len(error.problems) == 4 and "4 problems" in str(error)
    assert any(p.startswith("unknown key 'regoins' (did you mean 'regions'?)") for p in error.problems)
    assert any(p.startswith("unknown key 'colour'; valid keys: citation, description,") for p in error.problems)
    assert any(p.startswith("missing key 'name': the dataset's name") for p in error.problems)
    assert any(p.startswith("key 'regions' must be a list of strings") for p in error.problems)


def test_toml_syntax_error_names_the_file(tmp_path):
    error = manifest_error(tmp_path, 'name = "unterminated\n')
    assert error.problems[0].startswith("not valid TOML: ")


def test_check_reports_every_bad_key_with_the_file(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    (root / "dataset.toml").write_text(VALID.replace('["V4", "IT"]', '"V4,IT"') + "min_per_category = 0\n")
    result = check_folder(root)
    assert not result.ok and result.dataset is None and len(result.problems) == 2
    assert all(p.startswith(f"{root / 'dataset.toml'}: key '") for p in result.problems)


def test_stratify_by_none_loads_without_a_per_category_minimum(tmp_path):
    root = write_folder_dataset(tmp_path / "d", per_category=1, stratify_by="none")  # 1 image per category
    dataset = load_folder(root)
    assert dataset.stratify_by == neural_data.NO_STRATIFICATION == "none" and dataset.stratify_column is None
    assert len(dataset.stimuli) == 3
    result = check_folder(root)
    assert result.ok and result.dataset.stratify_by == "none"
    stratified = write_folder_dataset(tmp_path / "s", per_category=1)
    with pytest.raises(DatasetValidationError, match="fewer than 4 images"):
        load_folder(stratified)


def test_stratify_by_reaches_the_dataset_and_a_missing_column_is_named(tmp_path):
    root = write_folder_dataset(tmp_path / "d", stratify_by="object_name", manifest_extra="min_per_category = 2\n")
    assert load_folder(root).stratify_by == "object_name"
    missing = write_folder_dataset(tmp_path / "m", stratify_by="None")
    with pytest.raises(DatasetValidationError, match="no column 'None' to stratify splits by") as info:
        load_folder(missing)
    assert 'stratify_by = "none" turns stratification off' in str(info.value)
