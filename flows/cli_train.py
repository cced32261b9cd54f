"""`neuralign train` and `neuralign sweep-noise`: thin wrappers over models.train and models.sweep."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# The library is imported inside the handlers: building the parser (`neuralign --help`) then imports no torch.


def add_commands(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a network under a learning rule",
        description="Train under a preset (or a TOML config) and write out/checkpoint.pt, its .json metadata "
                    "and train_log.jsonl. Runs unchanged under torchrun (DDP).")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name (see `neuralign rules show NAME`)")
    source.add_argument("--config", help="TOML config file (may start from a preset with base = \"NAME\")")
    _add_run_options(train)
    existing = train.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its checkpoint (a fresh start when there is none)")
    existing.add_argument("--overwrite", action="store_true",
                          help="delete the run in --out (checkpoint, metadata, log) and start again")
    train.set_defaults(handler=_train)

    sweep = subparsers.add_parser(
        "sweep-noise", help="train rules x update-noise levels (paper Fig. 5 / S1)",
        description="Train every rule preset at every noise level; writes results.csv and results.md in --out.")
    sweep.add_argument("--rules", required=True, help="comma-separated presets, e.g. bp,sa,aa,kp")
    sweep.add_argument("--sigmas", required=True, help="comma-separated noise std, e.g. 0,0.01,0.1")
    _add_run_options(sweep)
    sweep.set_defaults(handler=_sweep)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="ImageNet-style folder (train/ val/) or builtin:digits")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--arch", help="architecture (default: the preset's)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--width", type=float, help="channel width multiplier (1.0 = standard ResNet)")
    parser.add_argument("--small-input", action="store_true", default=None,
                        help="3x3 stem without max-pool, for small images")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--amp", action="store_true", default=None,
                        help="bf16 autocast for the forward pass and task loss (the config's amp = true)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--workers", type=int, help="data-loading worker processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args) -> dict:
    image_size = args.image_size
    if image_size is None and args.arch and args.arch.endswith("_v2"):
        image_size = 299  # the paper trains the pre-activation (v2) ResNets on 299x299 images
    return {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size, "width": args.width,
            "small_input": args.small_input, "image_size": image_size, "seed": args.seed,
            "num_workers": args.workers, "amp": args.amp}


def _setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _train(args) -> int:
    from models.data import resolve
    from models.presets import load_preset, with_overrides
    from models.train import train

    _setup(args)
    config = with_overrides(load_preset(args.config or args.preset), **_overrides(args))
    train_set, val_set = resolve(args.data, image_size=config.image_size, seed=config.seed)
    path = train(config, train_set, val_set, args.out, resume=args.resume, overwrite=args.overwrite,
                 progress=not args.no_progress, device=args.device)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    metadata = json.loads(path.with_suffix(".json").read_text())
    if metadata["status"] == "diverged":
        at = metadata["diverged_at"]
        print(f"{path}: diverged at step {at['step']} ({at.get('layer') or 'task loss'}); "
              f"recorded top1 = {metadata['top1']}")
        return 3
    top1, top5 = metadata.get("top1"), metadata.get("top5")
    accuracy = f"top1 {top1:.4f} top5 {top5:.4f}" if top1 is not None else "no validation set"
    print(f"{path}: {config.name} ({config.rule}, {config.arch}) epoch {metadata['epoch']}, {accuracy}")
    return 0


def _sweep(args) -> int:
    from models.data import resolve
    from models.sweep import sweep_noise

    _setup(args)
    rules = [rule.strip() for rule in args.rules.split(",") if rule.strip()]
    try:
        sigmas = [float(sigma) for sigma in args.sigmas.split(",") if sigma.strip()]
    except ValueError:
        raise ValueError(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}") from None
    if not rules or not sigmas:
        raise ValueError("--rules and --sigmas each need at least one value")
    train_set, val_set = resolve(args.data, image_size=_overrides(args)["image_size"] or 224, seed=args.seed or 0)
    sweep_noise(rules, sigmas, train_set, val_set, args.out, _overrides(args), progress=not args.no_progress,
                device=args.device)
    print((Path(args.out) / "results.md").read_text())
    return 0
