"""The folder format: adding a dataset needs files, not code.

    my_dataset/
      dataset.toml     name, citation, id column, stratification column, regions, time window, file names
                       (the keys and their types: `neural_data.manifest.DatasetManifest`)
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
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DatasetError, cut_list
from ..manifest import MANIFEST_FILE, DatasetManifest, read_manifest
from ..schema import NeuralDataset, make_assembly, normalize_stimulus_table
from ..stimuli import StimulusSet, image_source
from ..validate import validate
from .brainio import assembly_from_brainio

RESPONSE_FILES = ("responses.nc", "responses.h5", "responses.hdf5", "responses.npy")
IMAGE_LOCATIONS = ("images", "images.zip")  # looked for in this order when dataset.toml names none


def load_folder(folder: str | Path, *, validate_dataset: bool = True, check_images: bool = True) -> NeuralDataset:
    """Read a folder-format dataset (see module docstring) and validate it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    stimuli = read_stimuli(folder, manifest)
    assembly = read_responses(folder, manifest, stimuli)
    if validate_dataset:
        validate(assembly, stimuli, source=str(folder), check_images=check_images, **manifest.validation_options())
    return folder_dataset(folder, manifest, stimuli, assembly)


def folder_dataset(folder: Path, manifest: DatasetManifest, stimuli: StimulusSet,
                   assembly: xr.DataArray) -> NeuralDataset:
    """The NeuralDataset of a folder's parts, with its truth.json when there is one."""
    truth_path = folder / "truth.json"
    return NeuralDataset(
        name=manifest.name, assembly=assembly, stimuli=stimuli, stratify_by=manifest.stratify_by,
        regions=list(manifest.regions), citation=manifest.citation,
        truth=_read_truth(truth_path) if truth_path.is_file() else None,
        source=str(folder), time_window_ms=manifest.time_window,
    )


def _read_truth(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON: {error}") from None


def read_stimuli(folder: Path, manifest: DatasetManifest) -> StimulusSet:
    """The stimulus table named by the manifest, with its images (a folder or a zip)."""
    path = folder / manifest.stimuli
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stimulus table not found")
    table = normalize_stimulus_table(pd.read_csv(path), manifest.stimulus_id_column, source=str(path))
    if "stimulus_id" not in table.columns:
        raise DatasetError(f"{path}: no 'stimulus_id' column; name the id column with stimulus_id_column "
                           f"in {MANIFEST_FILE} ({cut_list(table.columns, 'column', limit=20)})")
    candidates = [folder / manifest.images] if manifest.images else [folder / name for name in IMAGE_LOCATIONS]
    existing = [c for c in candidates if c.exists()]
    if not existing:
        raise FileNotFoundError(f"{folder}: no images found (looked for {', '.join(c.name for c in candidates)})")
    return StimulusSet(table, [image_source(existing[0])], source=str(path))


def _response_path(folder: Path, manifest: DatasetManifest) -> Path:
    if manifest.responses:
        path = folder / manifest.responses
        if not path.is_file():
            raise FileNotFoundError(f"{path}: responses file named in {MANIFEST_FILE} not found")
        return path
    for name in RESPONSE_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no responses file (expected one of {', '.join(RESPONSE_FILES)})")


def read_responses(folder: Path, manifest: DatasetManifest, stimuli: StimulusSet) -> xr.DataArray:
    """The trial-level assembly of the folder's responses file (.nc, .h5/.hdf5 or .npy)."""
    path = _response_path(folder, manifest)
    if path.suffix == ".nc":
        return _read_netcdf(path, stimuli, manifest.time_window)
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
            raise DatasetError(f"{path}: no dataset 'responses' (found {cut_list(handle.keys(), 'dataset', limit=20)})")
        return np.asarray(handle["responses"][()])


def _read_netcdf(path: Path, stimuli: StimulusSet, window) -> xr.DataArray:
    with xr.open_dataset(path) as dataset:
        variables = list(dataset.data_vars)
        if len(variables) != 1:
            raise DatasetError(f"{path}: expected one data variable, found {cut_list(variables, 'data variable')}")
        array = dataset[variables[0]].load()
    return assembly_from_brainio(array, stimuli.table, time_window=window, source=str(path))


def _read_neuroids(folder: Path, manifest: DatasetManifest, n_sites: int) -> pd.DataFrame:
    path = folder / manifest.neuroids
    if not path.is_file():
        raise FileNotFoundError(f"{path}: site table not found (one row per site: neuroid_id, region, ...)")
    table = pd.read_csv(path)
    for column in ("neuroid_id", "region"):
        if column not in table.columns:
            raise DatasetError(f"{path}: missing column '{column}' ({cut_list(table.columns, 'column', limit=20)})")
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
