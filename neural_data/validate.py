"""Schema checks. `find_problems` lists every problem as a sentence; `validate` raises on any.

Each sentence names the field (coord or column) and what was expected, and the raised error names the
file, so a user can fix a dataset without reading this code. `site_problems` names the sites of an
averaged assembly that a fit cannot score (constant, or defined on only part of the stimuli).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DatasetError, DatasetValidationError, cut_list
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
            problems.append(f"coord 'region' has values not among the declared regions "
                            f"({', '.join(map(str, regions))}): {cut_list(unknown, 'region')}")
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
            problems.append(f"duplicate neuroid_id values: {cut_list(duplicates, 'site id')}")
    if "stimulus_id" in assembly.coords and "repetition" in assembly.coords:
        keys = pd.Series(list(zip(assembly["stimulus_id"].values.astype(str), assembly["repetition"].values)))
        repeated = [f"({stimulus_id}, {repetition})" for stimulus_id, repetition in keys[keys.duplicated()]]
        if repeated:
            problems.append(f"duplicate (stimulus_id, repetition) presentations: "
                            f"{cut_list(repeated, 'presentation')}")
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
            ids = assembly["neuroid_id"].values[empty]
            problems.append(f"sites with only NaN responses: {cut_list(ids, 'site id')}")
    return problems


def _stimulus_table_problems(stimuli: StimulusSet, stratify_by: str | None, min_per_category: int) -> list[str]:
    problems = []
    table = stimuli.table
    duplicates = _duplicates(table["stimulus_id"].values)
    if duplicates:
        problems.append(f"stimulus table column 'stimulus_id' has duplicates: {cut_list(duplicates, 'stimulus id')}")
    if stratify_by:
        if stratify_by not in table.columns:
            problems.append(f"stimulus table has no column '{stratify_by}' to stratify splits by "
                            f"({cut_list(table.columns, 'column', limit=20)}; stratify_by = \"none\" "
                            f"turns stratification off)")
        else:
            counts = table[stratify_by].value_counts()
            small = counts[counts < min_per_category]
            if len(small):
                listed = [f"{name!s}: {count}" for name, count in small.items()]
                problems.append(f"column '{stratify_by}' has categories with fewer than {min_per_category} images "
                                f"(needed for a per-category train/test split): "
                                f"{cut_list(listed, 'category', 'categories')}")
    return problems


def _pairing_problems(assembly: xr.DataArray, stimuli: StimulusSet, check_images: bool) -> list[str]:
    problems = []
    presented = set(assembly["stimulus_id"].values.astype(str))
    listed = set(stimuli.stimulus_ids)
    without_metadata = sorted(presented - listed)
    if without_metadata:
        problems.append(f"stimuli with responses are missing from the stimulus table: "
                        f"{cut_list(without_metadata, 'stimulus id')}")
    without_responses = sorted(listed - presented)
    if without_responses:
        problems.append(f"stimuli of the stimulus table have no responses: "
                        f"{cut_list(without_responses, 'stimulus id')}")
    if check_images:
        without_images = stimuli.missing_images()
        if without_images:
            where = ", ".join(s.description for s in stimuli.sources) or "no image source given"
            problems.append(f"stimuli have no image in {where}: {cut_list(without_images, 'stimulus id')}")
    return problems


def _duplicates(values) -> list[str]:
    series = pd.Series(np.asarray(values).astype(str))
    return sorted(series[series.duplicated()].unique().tolist())


def site_problems(averaged: xr.DataArray) -> dict[str, list[str]]:
    """neuroid_ids of the sites of a repetition-averaged assembly that a fit cannot score as they are.

    averaged: (presentation = one per stimulus, neuroid), e.g. `NeuralDataset.averaged()`. Returns
    {"constant": sites whose finite responses are all the same value (no correlation is defined),
     "partly_nan": sites that are NaN on some stimuli but not on all (defined on only part of the images)},
    each in assembly order. A site can be in both. Sites that are NaN everywhere are in neither:
    `find_problems` refuses them.
    """
    if set(averaged.dims) != {PRESENTATION, NEUROID} or "neuroid_id" not in averaged.coords:
        raise DatasetError(f"site_problems needs an averaged assembly with dims ('presentation', 'neuroid') and "
                           f"coord 'neuroid_id'; got dims {tuple(averaged.dims)}")
    if "repetition" in averaged.coords:
        raise DatasetError("site_problems needs a repetition-averaged assembly (one presentation per stimulus); "
                           "this one has a 'repetition' coord: average it first (neural_data.average_repetitions)")
    values = np.asarray(averaged.transpose(PRESENTATION, NEUROID).values, dtype=np.float64)
    ids = averaged["neuroid_id"].values.astype(str)
    missing = np.isnan(values)
    defined = ~missing.all(axis=0)
    constant = np.zeros(ids.size, dtype=bool)
    if defined.any():  # with no stimuli, no site is defined and nanmax has nothing to reduce
        constant[defined] = np.nanmax(values[:, defined], axis=0) == np.nanmin(values[:, defined], axis=0)
    partly_nan = missing.any(axis=0) & defined
    return {"constant": ids[constant].tolist(), "partly_nan": ids[partly_nan].tolist()}
