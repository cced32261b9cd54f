"""`neuralign datasets list | check PATH | synth --out DIR`: the brain-dataset commands."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neural_data import FolderCheck, NeuralDataset


def add_commands(subparsers) -> None:
    datasets = subparsers.add_parser("datasets", help="list, check and generate brain datasets")
    commands = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="every registered dataset: images, sites per region, repetitions")
    listing.set_defaults(handler=list_command)

    check = commands.add_parser("check", help="validate a folder dataset and say what is wrong")
    check.add_argument("path", help="folder with dataset.toml, stimuli.csv, images and responses")
    check.set_defaults(handler=check_command)

    synth = commands.add_parser("synth", help="write a synthetic MajajHong2015-shaped dataset with planted answers")
    synth.add_argument("--out", required=True, help="output folder (must be new or empty)")
    synth.add_argument("--images", type=int, default=320, help="number of images, 32..5120 (default 320)")
    synth.add_argument("--sites", type=int, default=40, help="number of sites, V4:IT as 88:168 (default 40)")
    synth.add_argument("--reps", type=int, default=6, help="repetitions per image (default 6)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64, help="pixels per side (default 64; 256 for full size)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(handler=synth_command)


def list_command(args: argparse.Namespace) -> int:
    import neural_data
    from flows.workspace import error_text
    from neural_data.errors import DataNotAvailableError

    for name in neural_data.list_datasets():
        description = neural_data.describe(name)
        try:
            dataset = neural_data.load(name)
        except DataNotAvailableError as error:
            print(f"{name}: {description}\n    data not available here: {error_text(error)}")
            continue
        except (ValueError, LookupError, OSError) as error:
            print(f"{name}: {description}\n    cannot be loaded: {error_text(error)}")
            continue
        print(f"{name}: {description}\n    {dataset.summary()}\n    id {dataset.identifier}")
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Print the problems (exit 1) and warnings of a folder dataset, then, when it loads, its summary."""
    from neural_data import check_folder

    result = check_folder(args.path)
    print("\n".join(check_report(args.path, result)))
    return 0 if result.ok else 1


def check_report(path: str, result: FolderCheck) -> list[str]:
    """The lines `datasets check` prints: problems, warnings, then what a loadable dataset offers."""
    lines = _listed(f"{path}: {len(result.problems)} problem(s)", result.problems)
    lines += _listed(f"{path}: {len(result.warnings)} warning(s)", result.warnings)
    if result.dataset is not None:
        lines += [f"{path}: ok"] + dataset_lines(result.dataset)
    return lines


def dataset_lines(dataset: NeuralDataset) -> list[str]:
    """What a loadable dataset offers, one indented line per fact: its summary, identifier, stratification,
    and the fit protocols it supports (for each that it does not, why)."""
    from flows.support import protocol_lines

    stratified = dataset.stratify_column or "none (train/test splits are not stratified)"
    return ([f"  {dataset.summary()}", f"  id {dataset.identifier}", f"  stratify_by: {stratified}",
             "  fit protocols:"] + [f"    {line}" for line in protocol_lines(dataset)])


def _listed(header: str, items: list[str]) -> list[str]:
    return [f"{header}:"] + [f"  - {item}" for item in items] if items else []


def synth_command(args: argparse.Namespace) -> int:
    import json

    from neural_data import synth

    path = synth.generate(args.out, n_images=args.images, n_sites=args.sites, reps=args.reps, seed=args.seed,
                          image_size=args.image_size, overwrite=args.overwrite)
    truth = json.loads((path / "truth.json").read_text())
    print(f"wrote {path}")
    for region, values in truth["regions"].items():
        print(f"  {region}: {values['n_sites']} sites, true noise ceiling {values['noise_ceiling']:.3f}, "
              f"true predictivity {values['predictivity']:.3f}")
    return 0
