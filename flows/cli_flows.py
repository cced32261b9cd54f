"""`neuralign serve`: register the Prefect deployments and run them as they are requested.

This is what `make serve` / `make neural-fit` start in the background (scripts/start.sh). It needs
PREFECT_API_URL pointing at a running Prefect server.
"""
from __future__ import annotations


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the neural-fit, train-rule and compare deployments (needs PREFECT_API_URL)",
        description="Serve the Prefect deployments neural-fit/default, neural-fit/majajhong2015, "
                    "train-rule/default and compare/default until stopped (SIGTERM or Ctrl-C).",
    )
    parser.add_argument("--work", default=None,
                        help="work folder for checkpoints, datasets, activations and runs "
                             "(default: $NEURALIGN_WORK or ./work)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many flow runs at once")
    parser.set_defaults(handler=_serve)


def _serve(args) -> int:
    import os

    from flows.workspace import WORK_ENV, work_dir

    work = work_dir(args.work)
    os.environ[WORK_ENV] = str(work)  # the flow runs, started as subprocesses, inherit it
    from flows.serve import serve

    serve(work, limit=args.limit)
    return 0
