"""Activations -> regression -> scores -> reports. Pure library code: no Prefect import.

The metric has three steps (:mod:`pipeline.metric`): ``plan_fits`` (splits, targets, row order),
``fit`` (one region of one layer, some splits) and ``score_predictions`` (correlations, aggregation,
ceilings); ``fit_scores`` runs all three in one call.

The public names below are imported on first use (PEP 562), so ``import pipeline`` stays cheap:
torch, h5py and the regression code load only when a name that needs them is touched.
"""
from __future__ import annotations

import importlib

# public name -> (submodule, attribute). `pipeline.extract` is the submodule, so its main function is
# exported as `extract_activations`.
_EXPORTS = {
    "extract_activations": ("extract", "extract"),
    "resolve_layers": ("layers", "resolve_layers"),
    "UnknownLayerError": ("layers", "UnknownLayerError"),
    "FeatureStore": ("store", "FeatureStore"),
    "Preprocessing": ("preprocess", "Preprocessing"),
    "preprocess_images": ("preprocess", "preprocess_images"),
    "KernelPLS": ("pls", "KernelPLS"),
    "get_protocol": ("protocols", "get_protocol"),
    "PROTOCOLS": ("protocols", "PROTOCOLS"),
    "split_half_ceiling": ("ceiling", "split_half_ceiling"),
    "FitPlan": ("metric", "FitPlan"),
    "plan_fits": ("metric", "plan_fits"),
    "fit": ("metric", "fit"),
    "score_predictions": ("metric", "score_predictions"),
    "fit_scores": ("score", "fit_scores"),
    "write_report": ("report", "write_report"),
    "check_out_dir": ("report", "check_out_dir"),
    "compare_checkpoints": ("comparison", "compare"),
    "compare": ("report", "compare"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
