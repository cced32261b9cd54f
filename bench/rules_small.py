"""Every learning rule, same small ResNet-18, same built-in data, same CPU budget: top-1 and final angle.

    .venv/bin/python bench/rules_small.py [--epochs 5] [--width 0.125] [--image-size 16] [--threads 1]

Each rule keeps its preset's rule-specific settings (alignment optimizer and rate, primitive weights, input
noise, layer ops, alternating, delay) and gets one shared CPU schedule for J: `--epochs` epochs of
scikit-learn's digits (1437 train / 360 val images), batch 64, 1 warm-up epoch, lr x0.1 for the last epoch.
Nothing is tuned. Prints a table: top-1, top-5, mean angle between W and B over layers, mean ||B||/||W||,
seconds; the paper's ImageNet ordering is bp ~ sa ~ aa >= kp >= ia > wm (untuned) > fa.

`--batch-fractions 1,0.5,0.25` trains each rule whose alignment loss reads activations once per share of the
batch R is evaluated on (`alignment.batch_fraction`), to show what the cheaper estimate costs in accuracy:

    .venv/bin/python bench/rules_small.py --rules ia,aa --batch-fractions 1,0.5,0.25 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.data import builtin
from models.presets import load_preset, with_overrides
from models.rules import get_rule
from models.train import LOG_NAME, train

RULES = {"bp": "bp", "sa": "sa", "aa": "aa", "kp": "kp", "ia": "ia_tpe", "wm": "wm", "fa": "fa", "sa10": "sa"}
# sa10: SA with R's Adam rate x10 (1e-2). At this budget (~100 steps) Adam at 1e-3 can move each entry of B
# by at most ~0.1, about the size of W's entries, so the preset cannot reach alignment; the x10 variant shows
# where SA goes when R gets to move B.
EXTRA = {"sa10": {"alignment": {"lr": 1e-2}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated subset of " + ",".join(RULES))
    parser.add_argument("--batch-fractions", default="1", help="shares of the batch R reads, e.g. 1,0.5,0.25")
    args = parser.parse_args()
    fractions = [float(f) for f in args.batch_fractions.split(",")]
    torch.set_num_threads(args.threads)
    train_set, val_set = builtin("digits", image_size=args.image_size, seed=args.seed)
    print(f"digits {len(train_set)} train / {len(val_set)} val, {args.image_size}px, resnet18 width {args.width}, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"{'rule':<12} {'preset':<8} {'top1':>6} {'top5':>6} {'angle':>7} {'|B|/|W|':>8} {'sec':>6}  status")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for rule, fraction in runs(args.rules.split(","), fractions):
            label = rule if fraction == 1 else f"{rule} f={fraction:g}"
            extra = EXTRA.get(rule, {})
            config = with_overrides(
                load_preset(RULES[rule]), epochs=args.epochs, batch_size=args.batch_size, width=args.width,
                small_input=True, image_size=args.image_size, warmup_epochs=1, lr_drops=[args.epochs - 1],
                seed=args.seed, **{**extra, "alignment": {**extra.get("alignment", {}), "batch_fraction": fraction}})
            folder = Path(scratch) / label.replace(" ", "_")
            started = time.perf_counter()
            path = train(config, train_set, val_set, folder, progress=False)
            seconds = time.perf_counter() - started
            metadata = json.loads(path.with_suffix(".json").read_text())
            last = json.loads((folder / LOG_NAME).read_text().splitlines()[-1])
            layers = last.get("layers") or {}
            angle = np.mean([v["angle_deg"] for v in layers.values()]) if layers else 0.0  # bp: B is W
            ratio = np.mean([v["norm_ratio"] for v in layers.values()]) if layers else 1.0
            rows.append((label, metadata["top1"], angle))
            print(f"{label:<12} {RULES[rule]:<8} {100 * metadata['top1']:6.1f} {100 * metadata['top5']:6.1f} "
                  f"{angle:7.1f} {ratio:8.2f} {seconds:6.1f}  {metadata['status']}"
                  + (f" at step {metadata['diverged_at']['step']} ({metadata['diverged_at']['layer']})"
                     if metadata["status"] == "diverged" else ""), flush=True)
    order = " > ".join(rule for rule, _, _ in sorted(rows, key=lambda row: -row[1]))
    print(f"ordering by top-1 here: {order}")


def runs(rules: list[str], fractions: list[float]) -> list[tuple[str, float]]:
    """(rule, batch fraction) pairs: every rule at 1, the other fractions only where R reads activations."""
    pairs = []
    for rule in rules:
        needs_activations = get_rule(load_preset(RULES[rule]).rule).needs_activations
        pairs += [(rule, fraction) for fraction in fractions if fraction == 1 or needs_activations]
    return pairs


if __name__ == "__main__":
    main()
