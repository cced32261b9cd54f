"""The deployments, and `serve()`: what `neuralign serve` (and so `make neural-fit` / `make serve`) runs.

    neural-fit/default          the embedded CPU demo: synthetic MajajHong2015-shaped data generated into the
                                work folder, quarter-width ResNet-18s trained briefly under seven rules plus
                                the same small network untrained, the paper protocol. Offline, minutes on
                                2 cores. Its small sizes are this deployment's parameters (DEMO_*), never
                                defaults of the library or the CLI.
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

from flows.datasets import SYNTHETIC
from flows.workflows import compare, neural_fit, train_rule
from flows.workspace import work_dir

DEMO_RULES = ("bp", "fa", "wm", "ia", "sa", "aa", "kp")
# The untrained baseline of the demo: the demo's small network at its seeded initialisation.
DEMO_RANDOM = "random:resnet18?width=0.25&small_input=0&num_classes=8&seed=0&image_size=40"
DEMO_CHECKPOINTS = [*DEMO_RULES, DEMO_RANDOM]
# Training on 2 CPU cores (bench/demo_training.py, bench/RESULTS.md): a quarter-width ResNet-18 with the standard
# stem on 40 px renders, 3 epochs of 24000 images, batch 32, lr 0.05 decayed in steps of x0.6 over the last two
# epochs, weight decay 5e-3 (short-run scaling; see RESULTS.md). These override each preset's values (its rule,
# alignment optimizer and noise settings stay).
DEMO_TRAINING = {"width": 0.25, "small_input": False, "image_size": 40, "epochs": 3, "batch_size": 32,
                 "lr": 0.05, "weight_decay": 0.005, "warmup_epochs": 0.4,
                 "lr_drops": [1.0, 1.4, 1.7, 2.0, 2.25, 2.5, 2.7, 2.85], "lr_drop_factor": 0.6, "num_workers": 0}
DEMO_TRAINING_SET = {"n_per_class": 3000, "val_per_class": 100, "seed": 0}
DEMO_DATASET = {"n_images": 320, "n_sites": 40, "reps": 6, "seed": 0, "image_size": 64}
DEMO_NOTES = ("This default run is a CPU toy on synthetic data: small ResNet-18s trained for a few epochs on "
              "synthetic object images, scored against a synthetic MajajHong2015-shaped dataset with a planted "
              "answer. It shows the pipeline, and whether learning raises IT predictivity above the untrained "
              "network; it does not test the paper's ImageNet claim.")
# Runs import the flows by module path (`flows.workflows`), as Dask workers unpickle tasks by module name.
MODULE = EntrypointType.MODULE_PATH


def deployments(work: Path | None = None) -> list:
    """The RunnerDeployments served by `serve()`; parameter defaults point into the work folder."""
    work = work_dir(work)
    runs = work / "runs"
    return [
        neural_fit.to_deployment(
            name="default",
            description="Rules x layers x regions on the synthetic MajajHong2015-shaped dataset (CPU, offline).",
            parameters={
                "checkpoints": list(DEMO_CHECKPOINTS),
                "dataset": SYNTHETIC,
                "synthetic": dict(DEMO_DATASET),
                "training": dict(DEMO_TRAINING),
                "training_set": dict(DEMO_TRAINING_SET),
                "protocol": "paper",
                "layers": "default",
                "out": str(runs / "neural-fit-default"),
                "overwrite": True,  # the demo reruns into its own folder
                "notes": [DEMO_NOTES],
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
            },
            tags=["neuralign", "real-data"],
            entrypoint_type=MODULE,
        ),
        train_rule.to_deployment(
            name="default",
            description="Train one rule on the built-in synthetic object images (CPU-sized).",
            parameters={"rule": "fa", "data": "builtin:synthetic", "training": dict(DEMO_TRAINING),
                        "training_set": dict(DEMO_TRAINING_SET)},
            tags=["neuralign"],
            entrypoint_type=MODULE,
        ),
        compare.to_deployment(
            name="default",
            description="Merge finished neural-fit report folders into one comparison report.",
            parameters={"out": str(runs / "compare"), "overwrite": True},  # its own folder, like the demo's
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
