"""Activations -> regression -> scores -> reports. Pure library code: no Prefect import.

The public names below are imported on first use (PEP 562), so ``import pipeline`` stays cheap:
torch, h5py and the regression code load only when a name that needs them is touched.
"""
from __future__ import annotations

import importlib
from pathlib import Path

# public name -> (submodule, attribute). `pipeline.extract` is the submodule (contract:
# `pipeline.extract.extract`), so its main function is exported as `extract_activations`.
_EXPORTS = {
    "extract_activations": ("extract", "extract"),
    "resolve_layers": ("extract", "resolve_layers"),
    "weights_sha256": ("extract", "weights_sha256"),
    "UnknownLayerError": ("extract", "UnknownLayerError"),
    "ActivationStore": ("store", "ActivationStore"),
    "Preprocessing": ("preprocess", "Preprocessing"),
    "preprocess_images": ("preprocess", "preprocess_images"),
    "KernelPLS": ("pls", "KernelPLS"),
    "gram_blocks": ("pls", "gram_blocks"),
    "parse_reduction": ("reduce", "parse_reduction"),
    "get_protocol": ("protocols", "get_protocol"),
    "PROTOCOLS": ("protocols", "PROTOCOLS"),
    "split_half_ceiling": ("ceiling", "split_half_ceiling"),
    "fit_one": ("score", "fit_one"),
    "fit_scores": ("score", "fit_scores"),
    "write_report": ("report", "write_report"),
    "compare": ("report", "compare"),
}

# Only names whose module is present, so `from pipeline import *` works while parts are missing.
__all__ = sorted(name for name, (module, _) in _EXPORTS.items() if (Path(__file__).parent / f"{module}.py").exists())


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
