"""`neuralign fit` and `neuralign compare`: the neural-fit pipeline without Prefect (same steps as the flows).

    neuralign fit --checkpoint random:resnet18 --checkpoint run/sa/checkpoint.pt --dataset MajajHong2015 \\
        --data-root /data/mh15 --out work/runs/mine
    neuralign compare work/runs/a work/runs/b --out work/runs/a-vs-b
"""
from __future__ import annotations

import argparse
import json

REGRESSION_NAMES = ("pls", "pls-sklearn-default")  # pipeline.metric.REGRESSIONS, without importing torch for --help


def add_commands(subparsers) -> None:
    fit = subparsers.add_parser(
        "fit",
        help="score checkpoints' layers against a neural dataset and write a report",
        description="Extract every checkpoint's layers on the dataset's images, fit PLS to each region "
                    "with the protocol's splits, and write the report folder (scores.nc, summary.csv, ...). "
                    "Defaults are the paper's measurement: each checkpoint's own input size (224 px for "
                    "ImageNet ResNets), 25 PLS components, 10 splits of 75/25 within each category. Every "
                    "argument is checked before any compute. Each checkpoint succeeds or fails on its own: a "
                    "failed one is listed in the report with its reason, and the exit status is then 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fit.add_argument("--checkpoint", action="append", required=True, metavar="CKPT",
                     help="a .pt checkpoint, torchvision:ARCH=PATH, random:ARCH[?width=..&small_input=..], or "
                          "a rule/preset name trained with --training (repeatable)")
    fit.add_argument("--dataset", default=None, metavar="NAME_OR_PATH",
                     help="registered name (e.g. MajajHong2015), dataset folder, or 'synthetic' (required "
                          "unless --benchmark names it)")
    fit.add_argument("--benchmark", default=None, metavar="ID",
                     help="a Brain-Score benchmark, e.g. MajajHong2015public.IT-pls or MajajHong2015public.V4-pls: "
                          "sets the dataset, the brainscore protocol, its ceiling and formula, and writes "
                          "benchmark.json with the region's raw score, ceiling and ceiled score under Brain-Score's names")
    fit.add_argument("--out", required=True, metavar="DIR",
                     help="report folder (new or empty; an earlier run's folder only with --overwrite)")
    fit.add_argument("--overwrite", action="store_true", help="write over the report in a non-empty --out folder")
    fit.add_argument("--protocol", default="paper", choices=["paper", "brainscore"],
                     help="split and aggregation (--benchmark sets brainscore)")
    fit.add_argument("--splits", type=int, default=None, metavar="N",
                     help="number of train/test splits (default: the protocol's, 10)")
    fit.add_argument("--components", type=int, default=25, metavar="K", help="PLS components")
    fit.add_argument("--seed", type=int, default=None,
                     help="split seed (default: the protocol's: 0 for paper, Brain-Score's 1 for brainscore)")
    fit.add_argument("--layers", default="default",
                     help="'default', 'all', or comma-separated module names (e.g. layer3.1,layer4.1)")
    fit.add_argument("--image-size", type=int, default=None, metavar="PX",
                     help="network input size (default: each checkpoint's own: its training size, 224 for "
                          "ImageNet ResNet-18/34/50, 299 for the v2 ResNets)")
    fit.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    fit.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                     help="GB of activations held at once while the Gram matrices are formed; a smaller budget "
                          "costs more forward passes, never a different number (default: half the device's "
                          "free memory)")
    fit.add_argument("--keep-activations", action="store_true",
                     help="also write every layer's activations to disk (about 32 GB per checkpoint at 5120 "
                          "images x 224 px); the fits need only the Gram matrices")
    fit.add_argument("--regression", default=None, choices=REGRESSION_NAMES,
                     help="'pls': the exact PLS; 'pls-sklearn-default': sklearn's PLSRegression with its default "
                          "tolerance on Brain-Score's row order, for Brain-Score's leaderboard number to the last "
                          "digit (keeps the activations) (default: pls)")
    fit.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    fit.add_argument("--data-root", default=None, help="folder with the real data files of a registered dataset")
    fit.add_argument("--training", type=_json_object, default=None, metavar="JSON",
                     help="training settings for rule/preset checkpoints, e.g. '{\"epochs\": 3, \"width\": 0.25}'")
    fit.add_argument("--work", default=None, help="work folder (default: $NEURALIGN_WORK or ./work)")
    _add_statistics_options(fit)
    fit.set_defaults(handler=_fit)

    compare = subparsers.add_parser(
        "compare",
        help="merge finished fit reports into one comparison report",
        description="Merge the report folders of finished `fit` runs (or neural-fit flow runs) into one, with "
                    "the statistics of every checkpoint against --reference.",
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="report folders of finished runs")
    compare.add_argument("--out", required=True, metavar="DIR",
                         help="comparison report folder (new or empty; a non-empty one only with --overwrite)")
    compare.add_argument("--overwrite", action="store_true", help="write over the report in a non-empty --out folder")
    _add_statistics_options(compare)
    compare.set_defaults(handler=_compare)


def _add_statistics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", default="bp", metavar="NAME_OR_RULE",
                        help="the checkpoint (or rule) every other one is compared with in the Statistics section")
    parser.add_argument("--group-by", default=None, choices=["rule"],
                        help="pool checkpoints of the same rule (seeds) in the statistics")


def parse_layers(text: str):
    """'default' / 'all' stay names; 'a,b' becomes a list of module names."""
    from flows.preflight import normalize_layers

    return normalize_layers(text)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"epochs\": 3}}', got {text!r}")
    return value


def _fit(args) -> int:
    """Exit 0 when every checkpoint was scored; 1 when some failed (the report lists them with their reason)."""
    import sys

    from flows import steps

    dataset, protocol, benchmark = _benchmark_settings(args)
    options = {"n_components": args.components, **(benchmark.protocol_options() if benchmark else {})}
    if args.splits is not None:
        options["n_splits"] = args.splits
    if args.seed is not None:
        options["seed"] = args.seed
    if args.regression is not None:
        options["regression"] = args.regression
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise ValueError(f"--memory-budget: expected a positive number of GB, got {args.memory_budget}")
    memory_budget = None if args.memory_budget is None else int(args.memory_budget * 1e9)
    run = steps.run_fit(
        args.checkpoint, dataset, protocol=protocol, layers=parse_layers(args.layers), out=args.out,
        overwrite=args.overwrite, device=args.device, data_root=args.data_root, work=args.work,
        protocol_options=options, training=args.training,
        extraction={"image_size": args.image_size, "batch_size": args.batch_size, "memory_budget": memory_budget,
                    "keep_activations": args.keep_activations},
        reference=args.reference, group_by=args.group_by, progress=True,
    )
    print(f"report: {run.out}")
    if benchmark and (run.out / "scores.nc").is_file():
        from pipeline.benchmarks import write_benchmark_summary

        print(f"benchmark {benchmark.identifier}: {write_benchmark_summary(run.out, benchmark)}")
    if run.failed:
        print(f"neuralign fit: {run.failure_message()}", file=sys.stderr)
        return 1
    return 0


def _benchmark_settings(args):
    """(dataset, protocol, benchmark or None): a --benchmark fixes the dataset, the protocol and the splits."""
    if not args.benchmark:
        if not args.dataset:
            raise ValueError("neuralign fit: pass --dataset (or --benchmark, which names the dataset)")
        return args.dataset, args.protocol, None
    from pipeline.benchmarks import get_benchmark

    benchmark = get_benchmark(args.benchmark)
    conflicts = [f"{flag} {value}" for flag, value, allowed in (
        ("--dataset", args.dataset, (None, benchmark.dataset)), ("--protocol", args.protocol, ("paper", benchmark.protocol)),
        ("--components", args.components, (benchmark.n_components,)), ("--splits", args.splits, (None,)),
        ("--seed", args.seed, (None,))) if value not in allowed]
    if conflicts:
        raise ValueError(f"--benchmark {benchmark.identifier} fixes the dataset ({benchmark.dataset}), the protocol "
                         f"({benchmark.protocol}, {benchmark.n_components} components, its splits and seed); drop "
                         f"{', '.join(conflicts)} (point --data-root at the files)")
    return benchmark.dataset, benchmark.protocol, benchmark


def _compare(args) -> int:
    from flows import steps

    out = steps.compare_runs(args.run_dirs, args.out, reference=args.reference, group_by=args.group_by,
                             overwrite=args.overwrite)
    print(f"report: {out}")
    return 0
