"""The `neuralign` entry point: one command, sub-commands from each package, clear errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli


def test_help_lists_a_command_per_installed_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: neuralign" in capsys.readouterr().out


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("neuralign")
    assert script.exists(), f"no console script beside {sys.executable}: is the project installed?"
    completed = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "neuralign" in completed.stdout


# ------------------------------------------------------------------- `neuralign datasets check`: fit protocols
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Synthetic folder datasets, one per case: 64 images (one per object), 32 images, and 320 images with
    plain random splits (stratify_by = "none") and no object_name column."""
    import pandas as pd

    from neural_data import synth

    base = tmp_path_factory.mktemp("datasets")
    made = {name: synth.generate(base / name, n_images=n, n_sites=10, reps=2, image_size=16)
            for name, n in (("per-object", 64), ("too-few", 32), ("no-objects", 320))}
    manifest = made["no-objects"] / "dataset.toml"
    manifest.write_text(manifest.read_text().replace('stratify_by = "category_name"', 'stratify_by = "none"'))
    table = made["no-objects"] / "stimuli.csv"
    pd.read_csv(table).drop(columns=["object_name"]).to_csv(table, index=False)
    return made


def protocol_lines(capsys, folder) -> dict[str, str]:
    assert cli.main(["datasets", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.split("fit protocols:\n", 1)[1].splitlines()
    return dict(line.strip().split(": ", 1) for line in lines)


def test_datasets_check_says_which_fit_protocols_a_dataset_supports_and_why_not(folders, capsys):
    one_per_object = protocol_lines(capsys, folders["per-object"])
    assert one_per_object["paper"] == ("supported (10 splits of 48 train / 16 test images, stratified by "
                                       "'category_name'; 25-component PLS)")
    assert one_per_object["brainscore"].startswith(
        "not supported: fewer than 2 images per group of 'object_name' (64 groups, first 5: ")

    too_few = protocol_lines(capsys, folders["too-few"])
    assert too_few["paper"] == ("not supported: protocol 'paper': only 24 training images in a split for a "
                                "25-component PLS; need more stimuli or fewer components")

    no_objects = protocol_lines(capsys, folders["no-objects"])
    assert no_objects["paper"].startswith("supported (10 splits of 240 train / 80 test images, plain random splits")
    assert no_objects["brainscore"] == ("not supported: needs column 'object_name' (the protocol stratifies its "
                                        "splits by it)")


def test_a_dataset_without_its_stratification_column_says_how_to_fix_it(folders):
    """(A folder dataset that lacks its column fails `check_folder` itself; a registered one reaches this.)"""
    import pandas as pd

    import neural_data
    from flows.support import support

    dataset = neural_data.load(str(folders["per-object"]))
    averaged = dataset.averaged()
    metadata = pd.DataFrame({name: coord.values for name, coord in averaged.coords.items()
                             if coord.dims == ("presentation",)}).drop(columns=["category_name"])
    assert support(dataset, averaged, metadata, "paper") == (
        "not supported: column 'category_name' missing (set stratify_by in dataset.toml to a stimulus column, "
        "or \"none\" for plain random splits)")
