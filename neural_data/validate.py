"""Schema checks. `find_problems` lists every problem as a sentence; `validate` raises on any.

Each sentence names the field (coord or column) and what was expected, and the raised error names the
file, so a user can fix a dataset without reading this code.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DatasetValidationError
from .schema import NEUROID, PRESENTATION
from .stimuli import StimulusSet

REQUIRED_PRESENTATION_COORDS = ("stimulus_id", "repetition")
REQUIRED_NEUROID_COORDS = ("neuroid_id", "region")
DEFAULT_MIN_PER_CATEGORY = 4  # a 75/25 split within a category needs >= 3 train and >= 1 test image


def find_problems(assembly: xr.DataArray, stimuli: StimulusSet, *, stratify_by: str | None = "category_name",
                  min_per_category: int = DEFAULT_MIN_PER_CATEGORY, regions: list[str] | None = None,
                  check_images: bool = True) -> list[str]:
    """Every schema problem of a (trial-level assembly, stimulus set) pair, as readable sentences."""
    problems = _dims_problems(assembly)
    if problems:
        return problems  # nothing else can be checked reliably
    problems += _coord_problems(assembly)
    problems += _value_problems(assembly)
    problems += _stimulus_table_problems(stimuli, stratify_by, min_per_category)
    if "stimulus_id" in assembly.coords:
        problems += _pairing_problems(assembly, stimuli, check_images)
    if regions is not None and "region" in assembly.coords:
        unknown = sorted(set(assembly["region"].values.astype(str)) - set(regions))
        if unknown:
            problems.append(f"coord 'region' has values {unknown} not among the declared regions {list(regions)}")
    return problems


def validate(assembly: xr.DataArray, stimuli: StimulusSet, *, source: str = "dataset", **options) -> None:
    """Raise DatasetValidationError (a ValueError) naming `source` and listing every problem found.

    Options are those of `find_problems` (stratify_by, min_per_category, regions, check_images).
    """
    problems = find_problems(assembly, stimuli, **options)
    if problems:
        raise DatasetValidationError(source, problems)


def _dims_problems(assembly: xr.DataArray) -> list[str]:
    if not isinstance(assembly, xr.DataArray):
        return [f"responses must be an xarray.DataArray, got {type(assembly).__name__}"]
    if set(assembly.dims) != {PRESENTATION, NEUROID} or assembly.ndim != 2:
        return [f"responses have dims {tuple(assembly.dims)}; expected ('presentation', 'neuroid')"]
    return []


def _coord_problems(assembly: xr.DataArray) -> list[str]:
    problems = []
    for dim, names in ((PRESENTATION, REQUIRED_PRESENTATION_COORDS), (NEUROID, REQUIRED_NEUROID_COORDS)):
        for name in names:
            if name not in assembly.coords:
                problems.append(f"missing {dim} coord '{name}'")
            elif assembly[name].dims != (dim,):
                problems.append(f"coord '{name}' is along {assembly[name].dims}; expected ('{dim}',)")
    if "neuroid_id" in assembly.coords:
        duplicates = _duplicates(assembly["neuroid_id"].values)
        if duplicates:
            problems.append(f"duplicate neuroid_id values: {duplicates}")
    if "stimulus_id" in assembly.coords and "repetition" in assembly.coords:
        keys = pd.Series(list(zip(assembly["stimulus_id"].values.astype(str), assembly["repetition"].values)))
        repeated = keys[keys.duplicated()].head(5).tolist()
        if repeated:
            problems.append(f"duplicate (stimulus_id, repetition) presentations: {repeated}")
    return problems


def _value_problems(assembly: xr.DataArray) -> list[str]:
    problems = []
    if assembly.dtype.kind not in "fiu":
        return [f"responses have dtype {assembly.dtype}; expected numbers"]
    values = np.asarray(assembly.transpose(PRESENTATION, NEUROID).values, dtype=np.float64)
    if np.isinf(values).any():
        problems.append(f"responses hold {int(np.isinf(values).sum())} infinite values (use NaN for missing)")
    if values.size and "neuroid_id" in assembly.coords:
        empty = np.isnan(values).all(axis=0)
        if empty.any():
            ids = assembly["neuroid_id"].values[empty][:5].tolist()
            problems.append(f"{int(empty.sum())} site(s) have only NaN responses (neuroid_id {ids})")
    return problems


def _stimulus_table_problems(stimuli: StimulusSet, stratify_by: str | None, min_per_category: int) -> list[str]:
    problems = []
    table = stimuli.table
    duplicates = _duplicates(table["stimulus_id"].values)
    if duplicates:
        problems.append(f"stimulus table column 'stimulus_id' has duplicates: {duplicates}")
    if stratify_by:
        if stratify_by not in table.columns:
            problems.append(f"stimulus table has no column '{stratify_by}' to stratify splits by "
                            f"(columns: {', '.join(map(str, table.columns))})")
        else:
            counts = table[stratify_by].value_counts()
            small = counts[counts < min_per_category]
            if len(small):
                listed = ", ".join(f"{name!s}: {count}" for name, count in small.items())
                problems.append(f"column '{stratify_by}' has categories with fewer than {min_per_category} images "
                                f"(needed for a per-category train/test split): {listed}")
    return problems


def _pairing_problems(assembly: xr.DataArray, stimuli: StimulusSet, check_images: bool) -> list[str]:
    problems = []
    presented = set(assembly["stimulus_id"].values.astype(str))
    listed = set(stimuli.stimulus_ids)
    without_metadata = sorted(presented - listed)
    if without_metadata:
        problems.append(f"{len(without_metadata)} stimulus_id(s) with responses are missing from the stimulus "
                        f"table: {without_metadata[:5]}")
    without_responses = sorted(listed - presented)
    if without_responses:
        problems.append(f"{len(without_responses)} stimulus_id(s) of the stimulus table have no responses: "
                        f"{without_responses[:5]}")
    if check_images:
        without_images = stimuli.missing_images()
        if without_images:
            where = ", ".join(s.description for s in stimuli.sources) or "no image source given"
            problems.append(f"{len(without_images)} stimulus_id(s) have no image in {where}: {without_images[:5]}")
    return problems


def _duplicates(values) -> list:
    series = pd.Series(np.asarray(values).astype(str))
    return sorted(series[series.duplicated()].unique().tolist())[:5]
