"""Dataset specs (a registered name, a folder or file, or `synthetic`) as small JSON-able references.

Tasks on other processes reload the dataset from its reference; each process keeps the few it uses.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import neural_data
from neural_data import synth

from .workspace import work_dir

SYNTHETIC = "synthetic"  # generate neural_data.synth's MajajHong2015-shaped set into the work folder


def prepare_dataset(spec: str, work: str | os.PathLike | None = None, *, data_root: str | None = None,
                    synthetic: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reference to a loadable dataset: {"spec", "kwargs", "path", "identifier", "name", "regions",
    "stratify_by"}.

    spec: `synthetic` (neural_data.synth.generate(**synthetic) into <work>/datasets/, once per setting), a
    registered name (with `data_root`; without it the loader reads its environment variable, e.g.
    $NEURALIGN_MAJAJHONG2015), or a dataset folder / file.
    """
    work = work_dir(work)
    kwargs: dict[str, Any] = {}
    if spec == SYNTHETIC:
        spec = str(synth.cached(**(synthetic or {}), cache_dir=work / "datasets"))
    elif data_root:
        kwargs["data_root"] = str(Path(data_root).expanduser().resolve())
    dataset = load_dataset(spec, json.dumps(kwargs, sort_keys=True))
    return {
        "spec": spec,
        "kwargs": kwargs,
        "path": str(dataset.source),
        "identifier": dataset.identifier,
        "name": dataset.name,
        "regions": list(dataset.regions),
        "stratify_by": dataset.stratify_by,
    }


@functools.lru_cache(maxsize=4)
def load_dataset(spec: str, kwargs_json: str = "{}"):
    """neural_data.load(spec, **kwargs), kept per process so that many fits on one worker load it once."""
    return neural_data.load(spec, **json.loads(kwargs_json))


def dataset_of(reference: dict[str, Any]):
    """The NeuralDataset behind a `prepare_dataset` reference."""
    return load_dataset(reference["spec"], json.dumps(reference.get("kwargs", {}), sort_keys=True))
