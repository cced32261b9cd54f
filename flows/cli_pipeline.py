"""`neuralign fit` and `neuralign compare`: the neural-fit pipeline without Prefect (same functions as the flows).

    neuralign fit --checkpoint random:resnet18 --checkpoint fa --dataset synthetic --out work/runs/mine
    neuralign compare work/runs/a work/runs/b --out work/runs/a-vs-b
"""
from __future__ import annotations


def add_commands(subparsers) -> None:
    fit = subparsers.add_parser(
        "fit",
        help="score checkpoints' layers against a neural dataset and write a report",
        description="Extract every checkpoint's layers on the dataset's images, fit PLS to each region "
                    "with the protocol's splits, and write the report folder (scores.nc, summary.csv, ...).",
    )
    fit.add_argument("--checkpoint", action="append", required=True, metavar="CKPT",
                     help="a .pt checkpoint, random:ARCH, or a rule/preset name to train-or-load (repeatable)")
    fit.add_argument("--dataset", required=True, metavar="NAME_OR_PATH",
                     help="registered name (e.g. MajajHong2015), dataset folder, or 'synthetic'")
    fit.add_argument("--protocol", default="paper", help="paper (default) or brainscore")
    fit.add_argument("--layers", default="default",
                     help="'default', 'all', or comma-separated module names (e.g. layer3.1,layer4.1)")
    fit.add_argument("--out", required=True, metavar="DIR", help="report folder")
    fit.add_argument("--device", default=None, help="torch device for extraction (default: cuda if available)")
    fit.add_argument("--data-root", default=None, help="folder with the real data files of a registered dataset")
    fit.add_argument("--image-size", type=int, default=None, help="network input size in pixels")
    fit.add_argument("--work", default=None, help="work folder (default: $NEURALIGN_WORK or ./work)")
    fit.set_defaults(handler=_fit)

    compare = subparsers.add_parser(
        "compare",
        help="merge finished fit reports into one comparison report",
        description="Merge the report folders of finished `fit` runs (or neural-fit flow runs) into one.",
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="report folders of finished runs")
    compare.add_argument("--out", required=True, metavar="DIR", help="comparison report folder")
    compare.set_defaults(handler=_compare)


def parse_layers(text: str):
    """'default' / 'all' stay names; 'a,b' becomes a list of module names."""
    text = text.strip()
    if text in ("default", "all"):
        return text
    layers = [name.strip() for name in text.split(",") if name.strip()]
    if not layers:
        raise ValueError(f"--layers: expected 'default', 'all' or comma-separated module names, got {text!r}")
    return layers


def _fit(args) -> int:
    from flows import jobs

    extraction = {"image_size": args.image_size} if args.image_size else None
    report = jobs.run_fit(
        args.checkpoint, args.dataset, protocol=args.protocol, layers=parse_layers(args.layers), out=args.out,
        device=args.device, data_root=args.data_root, work=args.work, extraction=extraction, progress=True,
    )
    print(f"report: {report}")
    return 0


def _compare(args) -> int:
    from flows import jobs

    print(f"report: {jobs.compare_runs(args.run_dirs, args.out)}")
    return 0
