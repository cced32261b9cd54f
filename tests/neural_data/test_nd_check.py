"""`check_folder` and `neuralign datasets check`: undecodable images are problems, sites a fit cannot score are
warnings, and every id list in a message is cut to a count and the first few."""
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

import neural_data
from neural_data import DatasetError, UnreadableImageError, check_folder, site_problems
from neural_data.errors import cut_list
from neural_data.loaders import load_folder
from nd_fixtures import site_table, write_folder_dataset

SITE_IDS = site_table()["neuroid_id"].tolist()


def run_check_command(root, capsys) -> tuple[int, str]:
    from flows import cli

    code = cli.main(["datasets", "check", str(root)])
    return code, capsys.readouterr().out


def test_a_text_file_named_png_is_named_by_open_and_by_check(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "d")
    fake = root / "images" / "img0001.png"
    fake.write_text("this is not an image")
    stimuli = load_folder(root).stimuli  # loading only looks for files; decoding is the check's job
    with pytest.raises(UnreadableImageError) as info:
        stimuli.open("img0001")
    message = str(info.value)
    assert message == f"{fake}: the image of stimulus 'img0001' cannot be read: not a recognised image format (20 bytes)"
    assert isinstance(info.value, DatasetError) and "BytesIO" not in message
    result = check_folder(root)
    assert not result.ok and result.dataset is None
    expected = f"image files that are not readable images: 1 stimulus: img0001 ({fake}: not a recognised image format"
    assert result.problems == [expected + " (20 bytes))"]
    code, output = run_check_command(root, capsys)
    assert code == 1 and "1 problem(s)" in output and f"img0001 ({fake}" in output


def test_an_unreadable_zip_member_is_named(tmp_path):
    root = write_folder_dataset(tmp_path / "d", images="zip")
    archive = root / "images.zip"
    with zipfile.ZipFile(archive) as handle:
        members = {name: handle.read(name) for name in handle.namelist()}
    members["hvm/img1000.png"] = b"GIF89a but truncated"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    result = check_folder(root)
    assert len(result.problems) == 1
    assert f"img1000 ({archive}, member hvm/img1000.png: " in result.problems[0]
    expected = r"images.zip, member hvm/img1000.png: the image of stimulus 'img1000' cannot be read"
    with pytest.raises(UnreadableImageError, match=expected):
        load_folder(root).stimuli.open("img1000")


def test_a_truncated_png_is_named_with_pil_reason(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    path = root / "images" / "img2003.png"
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:-40])
    with pytest.raises(UnreadableImageError) as info:
        load_folder(root).stimuli.open("img2003")
    assert info.value.stimulus_id == "img2003" and info.value.location == str(path)
    assert info.value.reason and "BytesIO" not in info.value.reason
    assert [p for p in check_folder(root).problems if f"img2003 ({path}: {info.value.reason})" in p]


def test_many_unreadable_images_are_counted_and_the_list_is_cut(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    broken = [f"img{c}{i:03d}" for c in range(2) for i in range(4)][:7]
    for stimulus_id in broken:
        (root / "images" / f"{stimulus_id}.png").write_bytes(b"")
    problem, = check_folder(root).problems
    assert "7 stimuli, first 5: img0000 (" in problem
    assert all(s in problem for s in broken[:5]) and not any(s in problem for s in broken[5:])


def write_responses(root, edit):
    """Apply `edit` to the (site, stimulus, repetition) array of responses.npy."""
    array = np.load(root / "responses.npy")
    edit(array)
    np.save(root / "responses.npy", array)


def test_constant_and_partly_nan_sites_are_warnings(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "d")

    def edit(array):
        array[2] = np.arange(3)  # every trial varies, but every stimulus averages to 1.0
        array[5, [0, 7], :] = np.nan  # site 5 was not recorded for two images

    write_responses(root, edit)
    result = check_folder(root)
    assert result.ok and result.problems == [] and result.dataset is not None
    assert result.warnings == [
        (f"sites whose averaged response is the same for every stimulus (no correlation is defined; a fit leaves "
         f"them out): 1 site id: {SITE_IDS[2]}"),
        f"sites with no response (NaN) to some stimuli (a fit leaves them out): 1 site id: {SITE_IDS[5]}",
    ]
    assert site_problems(result.dataset.averaged()) == {"constant": [SITE_IDS[2]], "partly_nan": [SITE_IDS[5]]}
    code, output = run_check_command(root, capsys)
    assert code == 0 and "2 warning(s)" in output and SITE_IDS[2] in output and SITE_IDS[5] in output
    assert "problem" not in output and f"{root}: ok" in output and "stratify_by: category_name" in output


def test_a_site_nan_everywhere_is_a_problem_not_a_warning(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "d")
    write_responses(root, lambda array: array.__setitem__(4, np.nan))
    result = check_folder(root)
    assert result.problems == [f"sites with only NaN responses: 1 site id: {SITE_IDS[4]}"]
    assert result.warnings == [] and result.dataset is None
    assert run_check_command(root, capsys)[0] == 1


def test_site_problems_of_an_averaged_assembly(tmp_path):
    root = write_folder_dataset(tmp_path / "d")

    def edit(array):
        array[0] = 7.0
        array[0, 3] = np.nan  # constant where defined, and partly NaN: in both lists
        array[1, 1] = np.nan
        array[6] = np.nan  # NaN everywhere: in neither (validation refuses it)

    write_responses(root, edit)
    dataset = load_folder(root, validate_dataset=False)
    assert site_problems(dataset.averaged()) == {"constant": [SITE_IDS[0]], "partly_nan": [SITE_IDS[0], SITE_IDS[1]]}
    with pytest.raises(DatasetError, match="repetition-averaged assembly.*'repetition' coord"):
        site_problems(dataset.assembly)
    with pytest.raises(DatasetError, match="dims"):
        site_problems(dataset.averaged().expand_dims(time_bin=1))


def test_cut_list_counts_and_shows_the_first_few():
    ids = [f"s{index}" for index in range(640)]
    assert cut_list(ids, "stimulus id") == "640 stimulus ids, first 5: s0, s1, s2, s3, s4"
    assert cut_list(ids[:5], "stimulus id") == "5 stimulus ids: s0, s1, s2, s3, s4"
    assert cut_list(["a"], "category", "categories") == "1 category: a"
    assert cut_list([], "site id") == "no site ids"


def test_validation_messages_cut_long_id_lists(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    missing = [f"img{c}{i:03d}" for c in range(2) for i in range(4)]
    for stimulus_id in missing:
        (root / "images" / f"{stimulus_id}.png").unlink()
    problem, = check_folder(root).problems
    assert problem == f"stimuli have no image in {root / 'images'}: 8 stimulus ids, first 5: {', '.join(missing[:5])}"


def test_lookups_of_unknown_ids_are_plain_sentences(tmp_path):
    dataset = load_folder(write_folder_dataset(tmp_path / "d"))
    unknown = [f"nope{index}" for index in range(9)]
    with pytest.raises(DatasetError) as info:
        dataset.stimuli.subset(unknown)
    assert str(info.value).endswith("stimuli not in the set: 9 stimulus ids, first 5: nope0, nope1, nope2, nope3, "
                                    "nope4")
    with pytest.raises(neural_data.UnknownRegionError) as info:
        dataset.region("MT")
    assert str(info.value) == "tiny: no sites in region 'MT' (regions: V4, IT)"  # no KeyError quotes
    assert isinstance(info.value, KeyError)


def test_dataset_errors_survive_the_trip_to_a_worker_process():
    import pickle

    unreadable = UnreadableImageError.of("img7", "images/img7.png", "not a recognised image format (3 bytes)")
    copy = pickle.loads(pickle.dumps(unreadable))
    assert (str(copy), copy.stimulus_id, copy.location, copy.reason) == (
        str(unreadable), "img7", "images/img7.png", "not a recognised image format (3 bytes)")
    assert str(UnreadableImageError("re-raised from its message")) == "re-raised from its message"
    invalid = neural_data.DatasetValidationError("d/dataset.toml", ["key 'a' must be x", "key 'b' must be y"])
    copy = pickle.loads(pickle.dumps(invalid))
    assert (str(copy), copy.source, copy.problems) == (str(invalid), invalid.source, invalid.problems)
    assert str(invalid) == "d/dataset.toml: 2 problems:\n  - key 'a' must be x\n  - key 'b' must be y"
