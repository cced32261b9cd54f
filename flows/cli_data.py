"""`neuralign datasets list | check PATH | synth --out DIR`: the brain-dataset commands."""
from __future__ import annotations

import argparse


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
    from neural_data.errors import DataNotAvailableError

    for name in neural_data.list_datasets():
        description = neural_data.describe(name)
        try:
            dataset = neural_data.load(name)
        except DataNotAvailableError as error:
            print(f"{name}: {description}\n    data not available here: {error}")
            continue
        except (ValueError, LookupError, OSError) as error:
            print(f"{name}: {description}\n    cannot be loaded: {error}")
            continue
        print(f"{name}: {description}\n    {dataset.summary()}\n    id {dataset.identifier}")
    return 0


def check_command(args: argparse.Namespace) -> int:
    from neural_data.loaders import check_folder

    problems = check_folder(args.path)
    if problems:
        print(f"{args.path}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    import neural_data

    print(f"{args.path}: ok ({neural_data.load(args.path).summary()})")
    return 0


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
