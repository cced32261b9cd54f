"""The folder format: adding a dataset needs files, not code.

    my_dataset/
      dataset.toml     name, citation, id column, stratification column, regions, time window
      stimuli.csv      one row per image: the id column + any metadata (object_name, category_name, ...)
      images/ or images.zip   one file per stimulus, found by a filename column or as <stimulus_id>.png/.jpg
      responses.npy | responses.h5 | responses.nc
      neuroids.csv     one row per site (neuroid_id, region, ...), for .npy/.h5 responses
      truth.json       optional planted answers (synthetic datasets)

Responses as .npy or .h5 (dataset `responses`) are (neuroid, stimulus) or (neuroid, stimulus, repetition)
arrays with stimuli in stimuli.csv order, NaN for missing repeats. A .nc holds one DataArray, either in this
package's schema (presentation, neuroid) or Brain-Score's (neuroid, presentation[, time_bin]).
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DatasetError
from ..schema import NeuralDataset, make_assembly, normalize_stimulus_table
from ..stimuli import StimulusSet, image_source
from ..validate import DEFAULT_MIN_PER_CATEGORY, find_problems, validate
from .brainio import assembly_from_brainio

MANIFEST = "dataset.toml"
RESPONSE_FILES = ("responses.nc", "responses.h5", "responses.hdf5", "responses.npy")
KNOWN_KEYS = {"name", "citation", "stimulus_id_column", "stratify_by", "regions", "time_window_ms",
              "responses", "images", "stimuli", "neuroids", "description", "min_per_category"}


def read_manifest(folder: Path) -> dict:
    """dataset.toml as a dict, with unknown keys rejected (typos should not pass silently)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a folder dataset needs a {MANIFEST}; "
                                f"see neural_data/README.md, 'Adding a dataset')")
    try:
        manifest = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise DatasetError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(manifest) - KNOWN_KEYS)
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(KNOWN_KEYS)}")
    if "name" not in manifest:
        raise DatasetError(f"{path}: missing key 'name'")
    window = manifest.get("time_window_ms")
    if window is not None and (not isinstance(window, list) or len(window) != 2):
        raise DatasetError(f"{path}: 'time_window_ms' must be [start, end] in ms, got {window!r}")
    return manifest


def load_folder(folder: str | Path, *, validate_dataset: bool = True, check_images: bool = True) -> NeuralDataset:
    """Read a folder-format dataset (see module docstring) and validate it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    stimuli = _read_stimuli(folder, manifest)
    assembly = _read_responses(folder, manifest, stimuli)
    stratify_by = manifest.get("stratify_by", "category_name")
    regions = list(manifest.get("regions", [])) or None
    if validate_dataset:
        validate(assembly, stimuli, source=str(folder), stratify_by=stratify_by, regions=regions,
                 min_per_category=int(manifest.get("min_per_category", DEFAULT_MIN_PER_CATEGORY)),
                 check_images=check_images)
    truth_path = folder / "truth.json"
    window = manifest.get("time_window_ms")
    return NeuralDataset(
        name=manifest["name"], assembly=assembly, stimuli=stimuli, stratify_by=stratify_by,
        regions=regions or [], citation=manifest.get("citation", ""),
        truth=json.loads(truth_path.read_text()) if truth_path.is_file() else None,
        source=str(folder), time_window_ms=tuple(window) if window else None,
    )


def check_folder(folder: str | Path) -> list[str]:
    """Every problem of a folder dataset as sentences (empty list: it loads and validates)."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
        stimuli = _read_stimuli(folder, manifest)
        assembly = _read_responses(folder, manifest, stimuli)
    except (ValueError, LookupError, OSError) as error:
        return [str(error)]
    return find_problems(assembly, stimuli, stratify_by=manifest.get("stratify_by", "category_name"),
                         regions=list(manifest.get("regions", [])) or None,
                         min_per_category=int(manifest.get("min_per_category", DEFAULT_MIN_PER_CATEGORY)))


def _read_stimuli(folder: Path, manifest: dict) -> StimulusSet:
    path = folder / manifest.get("stimuli", "stimuli.csv")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stimulus table not found")
    table = pd.read_csv(path)
    table = normalize_stimulus_table(table, manifest.get("stimulus_id_column"), source=str(path))
    if "stimulus_id" not in table.columns:
        raise DatasetError(f"{path}: no 'stimulus_id' column; name the id column with stimulus_id_column "
                           f"in {MANIFEST} (columns: {', '.join(map(str, table.columns))})")
    images = manifest.get("images")
    candidates = [folder / images] if images else [folder / "images", folder / "images.zip"]
    existing = [c for c in candidates if c.exists()]
    if not existing:
        raise FileNotFoundError(f"{folder}: no images found (looked for {', '.join(c.name for c in candidates)})")
    return StimulusSet(table, [image_source(existing[0])], source=str(path))


def _response_path(folder: Path, manifest: dict) -> Path:
    if "responses" in manifest:
        path = folder / manifest["responses"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: responses file named in {MANIFEST} not found")
        return path
    for name in RESPONSE_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no responses file (expected one of {', '.join(RESPONSE_FILES)})")


def _read_responses(folder: Path, manifest: dict, stimuli: StimulusSet) -> xr.DataArray:
    path = _response_path(folder, manifest)
    window = tuple(manifest["time_window_ms"]) if manifest.get("time_window_ms") else None
    if path.suffix == ".nc":
        return _read_netcdf(path, stimuli, window)
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        array = _read_hdf5_array(path)
    neuroids = _read_neuroids(folder, manifest, n_sites=array.shape[0])
    return assembly_from_array(array, stimuli, neuroids, source=str(path))


def _read_hdf5_array(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as handle:
        if "responses" not in handle:
            raise DatasetError(f"{path}: no dataset 'responses' (found: {', '.join(handle.keys())})")
        return np.asarray(handle["responses"][()])


def _read_netcdf(path: Path, stimuli: StimulusSet, window) -> xr.DataArray:
    with xr.open_dataset(path) as dataset:
        variables = list(dataset.data_vars)
        if len(variables) != 1:
            raise DatasetError(f"{path}: expected one data variable, found {variables}")
        array = dataset[variables[0]].load()
    return assembly_from_brainio(array, stimuli.table, time_window=window, source=str(path))


def _read_neuroids(folder: Path, manifest: dict, n_sites: int) -> pd.DataFrame:
    path = folder / manifest.get("neuroids", "neuroids.csv")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: site table not found (one row per site: neuroid_id, region, ...)")
    table = pd.read_csv(path)
    for column in ("neuroid_id", "region"):
        if column not in table.columns:
            raise DatasetError(f"{path}: missing column '{column}' (columns: {', '.join(map(str, table.columns))})")
    if len(table) != n_sites:
        raise DatasetError(f"{path}: {len(table)} rows but the responses have {n_sites} sites (first axis)")
    table["neuroid_id"] = table["neuroid_id"].astype(str)
    table["region"] = table["region"].astype(str)
    return table


def assembly_from_array(array: np.ndarray, stimuli: StimulusSet, neuroids: pd.DataFrame,
                        source: str = "responses") -> xr.DataArray:
    """(neuroid, stimulus[, repetition]) array -> trial-level assembly; all-NaN presentations are dropped."""
    array = np.asarray(array, dtype=np.float32 if array.dtype != np.float64 else np.float64)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DatasetError(f"{source}: responses have shape {array.shape}; expected "
                           f"(neuroid, stimulus) or (neuroid, stimulus, repetition)")
    n_sites, n_stimuli, n_reps = array.shape
    if n_stimuli != len(stimuli):
        raise DatasetError(f"{source}: responses have {n_stimuli} stimuli (second axis) but the stimulus table "
                           f"has {len(stimuli)} rows")
    trials = array.transpose(1, 2, 0).reshape(n_stimuli * n_reps, n_sites)  # stimulus-major, then repetition
    stimulus_ids = np.repeat(np.asarray(stimuli.stimulus_ids), n_reps)
    repetitions = np.tile(np.arange(n_reps), n_stimuli)
    present = ~np.isnan(trials).all(axis=1)
    return make_assembly(trials[present], stimulus_ids[present], repetitions[present], neuroids, stimuli.table)
