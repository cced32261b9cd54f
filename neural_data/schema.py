"""The one schema every loader produces: a trial-level assembly plus its stimulus set.

Trial-level assembly: `xarray.DataArray`, dims ("presentation", "neuroid"). Presentation coords:
`stimulus_id`, `repetition` and the stimulus metadata (`object_name`, `category_name`, `variation`, ...);
neuroid coords: `neuroid_id`, `region` ("V4", "IT", ...) and e.g. `animal`, `arr` when known.
The averaged assembly has one presentation per stimulus (NaN-aware mean over repetitions).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DatasetError, UnknownRegionError, cut_list
from .stimuli import StimulusSet

PRESENTATION, NEUROID = "presentation", "neuroid"
NO_STRATIFICATION = "none"  # a dataset's stratify_by when train/test splits are plain random ones

# Metadata column spellings seen in the wild -> the schema's names.
COLUMN_ALIASES = {
    "image_id": "stimulus_id",
    "obj": "object_name",
    "category": "category_name",
    "var": "variation",
    "variation_level": "variation",
}


def normalize_stimulus_table(table: pd.DataFrame, id_column: str | None = None, source: str = "") -> pd.DataFrame:
    """Rename known aliases (image_id -> stimulus_id, obj -> object_name, var 'V3' -> variation 3, ...).

    `id_column` names the column holding the stimulus id when it is neither `stimulus_id` nor `image_id`.
    Byte strings are decoded; a column of "V0"/"V3"/"V6" variation labels becomes integers.
    """
    table = table.copy()
    table = table.loc[:, [c for c in table.columns if not str(c).startswith("Unnamed: ")]]
    for column in table.columns:
        if table[column].dtype == object and len(table) and isinstance(table[column].iloc[0], bytes):
            table[column] = [v.decode() if isinstance(v, bytes) else v for v in table[column]]
    if id_column and id_column != "stimulus_id":
        if id_column not in table.columns:
            raise DatasetError(f"{source or 'stimulus table'}: id column '{id_column}' not found "
                               f"({cut_list(table.columns, 'column', limit=20)})")
        table = table.drop(columns=[c for c in ["stimulus_id"] if c in table.columns])
        table = table.rename(columns={id_column: "stimulus_id"})
    renames = {old: new for old, new in COLUMN_ALIASES.items() if old in table.columns and new not in table.columns}
    table = table.rename(columns=renames)
    if "stimulus_id" in table.columns:
        table["stimulus_id"] = table["stimulus_id"].astype(str)
    if "variation" in table.columns:
        table["variation"] = _variation_numbers(table["variation"])
    return table


def _variation_numbers(column: pd.Series) -> pd.Series:
    text = column.astype(str).str.strip()
    if text.str.fullmatch(r"[Vv]\d+").all():
        return text.str[1:].astype(int)
    return column


def make_assembly(values: np.ndarray, stimulus_ids, repetitions, neuroids: pd.DataFrame,
                  stimulus_table: pd.DataFrame | None = None, attrs: dict | None = None) -> xr.DataArray:
    """Build a trial-level assembly.

    values: (n_presentations, n_neuroids) float; stimulus_ids, repetitions: (n_presentations,);
    neuroids: table with `neuroid_id`, `region` and any other per-site columns, one row per column of
    `values`; stimulus_table: metadata merged onto presentations by `stimulus_id`.
    """
    values = np.asarray(values)
    coords: dict[str, Any] = {
        "stimulus_id": (PRESENTATION, np.asarray(stimulus_ids).astype(str)),
        "repetition": (PRESENTATION, np.asarray(repetitions).astype(np.int64)),
    }
    if stimulus_table is not None:
        coords.update(_presentation_metadata(stimulus_table, coords["stimulus_id"][1]))
    for column in neuroids.columns:
        coords[column] = (NEUROID, _coord_values(neuroids[column]))
    return xr.DataArray(values, dims=(PRESENTATION, NEUROID), coords=coords, attrs=dict(attrs or {}))


def _coord_values(column: pd.Series) -> np.ndarray:
    if column.dtype == object or pd.api.types.is_string_dtype(column):
        return column.astype(str).to_numpy(dtype=str)
    return column.to_numpy()


def _presentation_metadata(stimulus_table: pd.DataFrame, stimulus_ids: np.ndarray) -> dict[str, Any]:
    table = stimulus_table.drop_duplicates("stimulus_id").set_index("stimulus_id")
    rows = table.reindex(stimulus_ids)
    return {column: (PRESENTATION, _coord_values(rows[column])) for column in table.columns
            if column not in ("repetition",)}


def neuroid_table(assembly: xr.DataArray) -> pd.DataFrame:
    """The neuroid coords of an assembly as a table (one row per site)."""
    return pd.DataFrame({name: coord.values for name, coord in assembly.coords.items()
                         if coord.dims == (NEUROID,)})


def average_repetitions(assembly: xr.DataArray, stimulus_ids: list[str] | None = None,
                        stimulus_table: pd.DataFrame | None = None) -> xr.DataArray:
    """NaN-aware mean over the presentations of each stimulus.

    Returns dims ("presentation", "neuroid") with one presentation per stimulus, ordered like
    `stimulus_ids` (default: order of first appearance). A site with no finite response to a
    stimulus gets NaN there. Presentation coords come from `stimulus_table` when given.
    """
    presented = assembly["stimulus_id"].values.astype(str)
    order = list(dict.fromkeys(presented)) if stimulus_ids is None else list(stimulus_ids)
    index = pd.Index(order)
    if not index.is_unique:
        duplicates = sorted(index[index.duplicated()].unique())
        raise DatasetError(f"stimulus ids are not unique: {cut_list(duplicates, 'repeated stimulus id')}")
    codes = index.get_indexer(presented)
    if (codes < 0).any():
        missing = sorted(set(presented[codes < 0]))
        raise DatasetError(f"assembly has responses to stimuli not in the stimulus set: "
                           f"{cut_list(missing, 'stimulus id')}")
    means = _grouped_nanmean(np.asarray(assembly.transpose(PRESENTATION, NEUROID).values), codes, len(order))
    table = stimulus_table if stimulus_table is not None else pd.DataFrame({"stimulus_id": order})
    coords: dict[str, Any] = {"stimulus_id": (PRESENTATION, np.asarray(order, dtype=str))}
    coords.update(_presentation_metadata(table, np.asarray(order, dtype=str)))
    for name, coord in assembly.coords.items():
        if coord.dims == (NEUROID,):
            coords[name] = (NEUROID, coord.values)
    return xr.DataArray(means.astype(assembly.dtype if assembly.dtype.kind == "f" else np.float64),
                        dims=(PRESENTATION, NEUROID), coords=coords, attrs=dict(assembly.attrs))


def _grouped_nanmean(values: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, n_sites) float64 mean of the finite values of each group; NaN where a group has none.

    A sparse (group x presentation) indicator matrix does the sums in one product, in float64.
    """
    from scipy import sparse

    finite = np.isfinite(values)
    filled = values.astype(np.float64)  # float64 sums: no drift over ~50 repetitions
    filled[~finite] = 0.0
    indicator = sparse.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))),
                                  shape=(n_groups, codes.size))
    sums = indicator @ filled
    counts = indicator.astype(np.float32) @ finite.astype(np.float32)  # small integers: exact in float32
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)


def assembly_hash(assembly: xr.DataArray, stimuli: StimulusSet) -> str:
    """sha256 of the responses, the site ids, the presentation keys and the stimulus table."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(assembly.transpose(PRESENTATION, NEUROID).values).tobytes())
    for name in ("neuroid_id", "region", "stimulus_id", "repetition"):
        if name in assembly.coords:
            digest.update(name.encode() + b"\0" + "\0".join(map(str, assembly[name].values)).encode())
    digest.update(stimuli.table_hash().encode())
    return digest.hexdigest()


@dataclass
class NeuralDataset:
    """A neural dataset in the common schema.

    assembly: trial-level DataArray (presentation, neuroid); stimuli: the StimulusSet of every presented
    stimulus; stratify_by: the stimulus column to stratify train/test splits by, or "none"
    (`NO_STRATIFICATION`) for plain random splits; regions: the region labels present; truth: planted
    answers (synthetic datasets only); source: where it was read from.
    `identifier` (name + content hash) is computed when left empty.
    """

    name: str
    assembly: xr.DataArray = field(repr=False)
    stimuli: StimulusSet = field(repr=False)
    stratify_by: str = "category_name"
    regions: list[str] = field(default_factory=list)
    citation: str = ""
    truth: dict | None = None
    source: str = ""
    identifier: str = ""
    time_window_ms: tuple[float, float] | None = None
    _averaged: xr.DataArray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.regions and "region" in self.assembly.coords:
            self.regions = [str(r) for r in dict.fromkeys(self.assembly["region"].values.astype(str))]
        if not self.identifier:
            self.identifier = f"{self.name}-{assembly_hash(self.assembly, self.stimuli)[:16]}"

    def __repr__(self) -> str:
        return f"NeuralDataset({self.identifier!r}: {self.summary()}; source {self.source!r})"

    @property
    def stratify_column(self) -> str | None:
        """The stimulus column splits are stratified by; None when `stratify_by` is "none"."""
        return None if self.stratify_by == NO_STRATIFICATION else self.stratify_by

    def averaged(self) -> xr.DataArray:
        """(presentation=stimulus, neuroid) NaN-aware mean over repetitions, ordered like `stimuli.stimulus_ids`."""
        if self._averaged is None:
            self._averaged = average_repetitions(self.assembly, self.stimuli.stimulus_ids, self.stimuli.table)
        return self._averaged

    @property
    def n_repetitions(self) -> dict[str, int]:
        """min / median / max number of presentations per stimulus."""
        counts = pd.Series(self.assembly["stimulus_id"].values).value_counts()
        return {"min": int(counts.min()), "median": int(counts.median()), "max": int(counts.max())}

    def sites_per_region(self) -> dict[str, int]:
        regions = pd.Series(self.assembly["region"].values.astype(str))
        return {region: int((regions == region).sum()) for region in self.regions}

    def region(self, name: str) -> xr.DataArray:
        """The averaged assembly restricted to one region's sites."""
        averaged = self.averaged()
        mask = averaged["region"].values.astype(str) == name
        if not mask.any():
            raise UnknownRegionError(f"{self.name}: no sites in region '{name}' (regions: {', '.join(self.regions)})")
        return averaged.isel(neuroid=np.flatnonzero(mask))

    def summary(self) -> str:
        sites = ", ".join(f"{region} {count}" for region, count in self.sites_per_region().items())
        reps = self.n_repetitions
        rep_text = str(reps["min"]) if reps["min"] == reps["max"] else f"{reps['min']}-{reps['max']}"
        return f"{len(self.stimuli)} images; sites: {sites}; repetitions: {rep_text}"
