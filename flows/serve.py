"""The deployments, and `serve()`: what `neuralign serve` (and so `make neural-fit` / `make serve`) runs.

    neural-fit/default          the embedded default: synthetic MajajHong2015-shaped data generated into the
                                work folder, quarter-width ResNet-18s trained briefly under seven rules plus
                                an untrained one, the paper protocol. Offline, CPU, minutes on 2 cores.
    neural-fit/majajhong2015    the real data: `data_root` (or $NEURALIGN_MAJAJHONG2015) and checkpoints.
    train-rule/default          one rule on the built-in synthetic object images.
    compare/default             merge finished runs into one report.

Served with `prefect.serve` against the Prefect server of $PREFECT_API_URL; no work pool needed.
"""
from __future__ import annotations

import os
from pathlib import Path

from prefect import serve as prefect_serve
from prefect.deployments.runner import EntrypointType

from flows import jobs
from flows.flows import compare, neural_fit, train_rule

DEFAULT_RULES = ("bp", "fa", "wm", "ia", "sa", "aa", "kp")
DEFAULT_CHECKPOINTS = [*DEFAULT_RULES, "random:resnet18"]
# Runs import the flows as `flows.flows`: by file path the module would be named `flows` and shadow the
# package in Dask workers, which unpickle tasks by module name.
MODULE = EntrypointType.MODULE_PATH


def deployments(work: Path | None = None) -> list:
    """The RunnerDeployments served by `serve()`; parameter defaults point into the work folder."""
    work = jobs.work_dir(work)
    runs = work / "runs"
    return [
        neural_fit.to_deployment(
            name="default",
            description="Rules x layers x regions on the synthetic MajajHong2015-shaped dataset (CPU, offline).",
            parameters={
                "checkpoints": list(DEFAULT_CHECKPOINTS),
                "dataset": jobs.SYNTHETIC,
                "protocol": "paper",
                "layers": "default",
                "out": str(runs / "neural-fit-default"),
                # Fits on 320 images take milliseconds: one task per (layer, region) keeps Prefect's
                # per-task overhead (~0.5 s on 2 cores) from dominating.
                "splits_per_task": 10,
            },
            tags=["neuralign", "default"],
            entrypoint_type=MODULE,
        ),
        neural_fit.to_deployment(
            name="majajhong2015",
            description="Fits on the real MajajHong2015 data: set data_root (or $NEURALIGN_MAJAJHONG2015) "
                        "and checkpoints.",
            parameters={
                "dataset": "MajajHong2015",
                "protocol": "paper",
                "layers": "default",
                "out": str(runs / "neural-fit-majajhong2015"),
                "extraction": {"image_size": 224, "batch_size": 64},
            },
            tags=["neuralign", "real-data"],
            entrypoint_type=MODULE,
        ),
        train_rule.to_deployment(
            name="default",
            description="Train one rule on the built-in synthetic object images (CPU-sized).",
            parameters={"rule": "fa", "data": "builtin:synthetic"},
            tags=["neuralign"],
            entrypoint_type=MODULE,
        ),
        compare.to_deployment(
            name="default",
            description="Merge finished neural-fit report folders into one comparison report.",
            parameters={"out": str(runs / "compare")},
            tags=["neuralign"],
            entrypoint_type=MODULE,
        ),
    ]


def serve(work: Path | None = None, limit: int | None = None) -> None:
    """Register the deployments and execute their runs until stopped (SIGTERM or Ctrl-C)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError("PREFECT_API_URL is not set: start the server with `make serve` (scripts/start.sh), "
                         "or export PREFECT_API_URL=http://127.0.0.1:<port>/api")
    prefect_serve(*deployments(work), limit=limit, print_starting_message=True)
