"""The examples of neural_data/README.md run as written: its Python blocks, its commands, and its folder dataset
built step by step with the README's own dataset.toml."""
import re
import shlex
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

import neural_data
from neural_data import registry
from nd_fixtures import write_images

README = Path(neural_data.__file__).parent / "README.md"
FOLDER = "my_dataset"  # the folder name the README uses


def fenced_blocks(language: str) -> list[str]:
    """The bodies of the README's ```<language> blocks, indentation removed (some sit inside list items)."""
    pattern = re.compile(rf"^( *)```{language}\n(.*?)^\1```", re.DOTALL | re.MULTILINE)
    return [textwrap.dedent(body) for _, body in pattern.findall(README.read_text())]


def command_lines() -> list[list[str]]:
    """Every `neuralign ...` line of the README as argv (comments dropped, program name dropped)."""
    lines = [line.split("#")[0] for line in README.read_text().splitlines() if line.startswith("neuralign ")]
    return [shlex.split(line)[1:] for line in lines]


def readme_manifest() -> str:
    manifests = [block for block in fenced_blocks("toml") if "name" in tomllib.loads(block)]
    assert len(manifests) == 1, "the README shows one dataset.toml"
    return manifests[0]


def build_readme_folder(root: Path, per_category: int = 4) -> Path:
    """my_dataset/ as steps 1-5 describe: <image_id>.png images, stimuli.csv with an image_id column,
    (neuroid, stimulus, repetition) responses.npy, neuroids.csv, and the README's dataset.toml."""
    folder = root / FOLDER
    categories = ["Animals", "Cars"]
    ids = [f"im_{category}_{index}" for category in categories for index in range(per_category)]
    write_images(folder / "images", ids)
    pd.DataFrame({"image_id": ids, "category_name": np.repeat(categories, per_category),
                  "object_name": [f"{i.split('_')[1]}{int(i[-1]) % 2}" for i in ids]}).to_csv(
        folder / "stimuli.csv", index=False)
    sites = pd.DataFrame({"neuroid_id": ["a1", "a2", "b1"], "region": ["V4", "IT", "IT"]})
    sites.to_csv(folder / "neuroids.csv", index=False)
    rng = np.random.default_rng(0)
    np.save(folder / "responses.npy", rng.normal(size=(len(sites), len(ids), 2)).astype(np.float32))
    (folder / "dataset.toml").write_text(readme_manifest())
    return folder


def run_command(argv: list[str], capsys) -> tuple[int, str]:
    from flows import cli

    code = cli.main(argv)
    return code, capsys.readouterr().out


def test_the_readme_folder_dataset_checks_and_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    build_readme_folder(tmp_path)
    check, = [argv for argv in command_lines() if argv[:2] == ["datasets", "check"]]
    assert check[2] == FOLDER
    code, output = run_command(check, capsys)
    assert code == 0, output
    assert "my_dataset: ok" in output and "8 images; sites: V4 1, IT 2; repetitions: 2" in output
    dataset = neural_data.load(FOLDER)
    assert (dataset.name, dataset.stratify_by, dataset.time_window_ms) == ("MyLab2024", "category_name", (70, 170))
    assert dataset.stimuli.stimulus_ids[0] == "im_Animals_0" and dataset.regions == ["V4", "IT"]


def test_the_readme_quotes_the_real_message_for_string_regions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = build_readme_folder(tmp_path)
    manifest = folder / "dataset.toml"
    manifest.write_text(re.sub(r"^regions = .*$", 'regions = "V4,IT"', manifest.read_text(), flags=re.MULTILINE))
    quoted, = re.findall(r"`(my_dataset/dataset.toml: key 'regions'[^`]*)`", README.read_text())
    assert neural_data.check_folder(FOLDER).problems == [quoted]


def test_the_readme_stratify_by_none_drops_the_per_group_minimum(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = build_readme_folder(tmp_path, per_category=2)
    assert "fewer than 4 images" in neural_data.check_folder(FOLDER).problems[0]
    manifest = folder / "dataset.toml"
    manifest.write_text(re.sub(r"^stratify_by = .*$", 'stratify_by = "none"', manifest.read_text(), flags=re.MULTILINE))
    result = neural_data.check_folder(FOLDER)
    assert result.ok and result.dataset.stratify_column is None


def test_the_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
    namespace = {}
    blocks = fenced_blocks("python")
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["dataset"].name == "synthetic" and namespace["dataset"].truth is not None
    assert neural_data.describe("MyLab2024") == "MyLab 2024: 800 images, V4 and IT."


def test_the_readme_entry_point_block_names_the_registry_group():
    entry_points, = [tomllib.loads(block) for block in fenced_blocks("toml") if "project" in tomllib.loads(block)]
    assert set(entry_points["project"]["entry-points"]) == {registry.ENTRY_POINT_GROUP}


def test_the_readme_list_and_synth_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEURALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NEURALIGN_MAJAJHONG2015", raising=False)
    commands = [argv for argv in command_lines() if argv[:2] != ["datasets", "check"]]
    full_size = [argv for argv in commands if "5120" in argv]
    assert len(full_size) == 1  # generating 5120 images at 256 px takes minutes: left to a real run
    for argv in commands:
        if argv in full_size:
            continue
        code, output = run_command(argv, capsys)
        assert code == 0, (argv, output)
    assert (tmp_path / "work" / "syn" / "dataset.toml").is_file()
    from flows import cli

    args = cli.build_parser().parse_args(full_size[0])  # the full-size command at least parses
    assert (args.images, args.sites, args.image_size, args.handler.__name__) == (5120, 256, 256, "synth_command")
