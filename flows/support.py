"""Which fit protocols a dataset supports, and for each that it does not, why (`neuralign datasets check`).

The surest answer is the fit's own: each protocol's fit plan (`pipeline.metric.plan_fits`: its splits on the
dataset's stimulus metadata and the minimum training size of a 25-component PLS) is built exactly as a fit
builds it, with the dataset's `stratify_by` reaching the paper protocol. The common reasons are said
plainly first (a missing column, groups too small to split).
"""
from __future__ import annotations

import pandas as pd

from pipeline.metric import plan_fits
from pipeline.protocols import NO_STRATIFICATION, PROTOCOLS

from .steps import N_COMPONENTS, protocol_spec
from .workspace import counted, first_line

MIN_PER_GROUP = 2  # one training and one test image in every group


def protocol_lines(dataset, n_components: int = N_COMPONENTS) -> list[str]:
    """'paper: supported (...)' or 'brainscore: not supported: needs column 'object_name' (...)', one per protocol."""
    averaged = dataset.averaged()
    metadata = pd.DataFrame({name: coord.values for name, coord in averaged.coords.items()
                             if coord.dims == ("presentation",)})
    return [f"{name}: {support(dataset, averaged, metadata, name, n_components)}" for name in PROTOCOLS]


def support(dataset, averaged, metadata: pd.DataFrame, name: str, n_components: int = N_COMPONENTS) -> str:
    spec = protocol_spec(name, None, {"stratify_by": dataset.stratify_by})
    column = spec["stratify_by"]
    reason = _missing_column(name, column, metadata) or _small_groups(column, metadata)
    if reason:
        return f"not supported: {reason}"
    settings = {key: value for key, value in spec.items() if key not in ("name", "n_components", "regression")}
    try:
        plan = plan_fits(averaged, name, n_components=n_components, **settings)
    except (ValueError, LookupError) as error:
        return f"not supported: {first_line(error)}"
    train, test = len(plan.splits[0][0]), len(plan.splits[0][1])
    how = "plain random splits" if column == NO_STRATIFICATION else f"stratified by {column!r}"
    return (f"supported ({spec['n_splits']} splits of {train} train / {test} test images, {how}; "
            f"{n_components}-component PLS)")


def _missing_column(name: str, column: str, metadata: pd.DataFrame) -> str:
    if column == NO_STRATIFICATION or column in metadata.columns:
        return ""
    if name == "paper":
        return (f"column {column!r} missing (set stratify_by in dataset.toml to a stimulus column, or "
                f"\"{NO_STRATIFICATION}\" for plain random splits)")
    return f"needs column {column!r} (the protocol stratifies its splits by it)"


def _small_groups(column: str, metadata: pd.DataFrame) -> str:
    if column == NO_STRATIFICATION:
        return ""
    counts = metadata[column].astype(str).value_counts()
    small = sorted(counts[counts < MIN_PER_GROUP].index)
    if not small:
        return ""
    return (f"fewer than {MIN_PER_GROUP} images per group of {column!r} ({counted(small, 'group')}); a split "
            "needs a training and a test image in each")
