"""The DiCarlo lab HDF5 release of the HvM recordings (`ventral_neural_data.hdf5`), read unchanged.

Layout:
    images                          (n_images, H, W) uint8 or float
    image_meta/<field>              (n_images,) byte strings or numbers: object (obj | object_name),
                                    category, variation (var | variation_level, 'V0'/'V3'/'V6'), id, pose ...
    neural_meta/IT_NEURONS, V4_NEURONS   integer indices into the site axis
    time_averaged_trial_averaged    (n_images, n_sites) responses averaged over 70-170 ms and trials
    time_averaged/variation_level_K (n_repetitions, n_images of variation K, n_sites) single trials

Sites are the ones listed in neural_meta (named `<region>_<column>`); the trial data of each variation are
used when present, else the trial-averaged row (as one repetition).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DatasetError, cut_list
from ..schema import NeuralDataset, make_assembly, normalize_stimulus_table
from ..stimuli import ArrayImages, StimulusSet

REGION_INDEX_FIELDS = {"V4": "V4_NEURONS", "IT": "IT_NEURONS"}
ID_FIELDS = ("id", "image_id", "_id")
TIME_WINDOW_MS = (70, 170)


def _read_image_meta(handle, path: Path) -> pd.DataFrame:
    if "image_meta" not in handle:
        raise DatasetError(f"{path}: missing group 'image_meta'")
    group = handle["image_meta"]
    columns = {}
    for key in group.keys():
        values = np.asarray(group[key][()])
        if values.ndim != 1:
            continue
        if values.dtype.kind in "SO":
            values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
        columns[key] = values
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{path}: image_meta fields have different lengths: {lengths}")
    table = pd.DataFrame(columns)
    id_field = next((f for f in ID_FIELDS if f in table.columns), None)
    if id_field is None:
        table["stimulus_id"] = [f"hvm_{index:05d}" for index in range(len(table))]
    table = normalize_stimulus_table(table, id_field, source=f"{path}:image_meta")
    for required in ("object_name", "category_name", "variation"):
        if required not in table.columns:
            raise DatasetError(f"{path}: missing image_meta field for '{required}' "
                               f"(found {cut_list(group.keys(), 'field', limit=20)})")
    return table


def _read_sites(handle, path: Path, n_sites: int) -> tuple[np.ndarray, pd.DataFrame]:
    if "neural_meta" not in handle:
        raise DatasetError(f"{path}: missing group 'neural_meta' (with {', '.join(REGION_INDEX_FIELDS.values())})")
    columns, regions = [], []
    for region, field in REGION_INDEX_FIELDS.items():
        if field not in handle["neural_meta"]:
            raise DatasetError(f"{path}: missing neural_meta/{field}")
        indices = np.asarray(handle["neural_meta"][field][()]).astype(np.int64).ravel()
        if indices.size and (indices.min() < 0 or indices.max() >= n_sites):
            raise DatasetError(f"{path}: neural_meta/{field} indexes sites outside 0..{n_sites - 1}")
        columns.extend(indices.tolist())
        regions.extend([region] * indices.size)
    columns = np.asarray(columns, dtype=np.int64)
    sites = pd.DataFrame({"neuroid_id": [f"{r}_{c:03d}" for r, c in zip(regions, columns)], "region": regions,
                          "site_index": columns})
    return columns, sites


def load_dicarlo_hdf5(path: str | os.PathLike, *, variations=None, name: str | None = None,
                      stratify_by: str = "category_name", citation: str = "") -> NeuralDataset:
    """Load `ventral_neural_data.hdf5`; `variations` (e.g. [3, 6]) keeps only those variation levels."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: HDF5 file not found")
    with h5py.File(path, "r") as handle:
        for required in ("images", "time_averaged_trial_averaged"):
            if required not in handle:
                raise DatasetError(f"{path}: missing dataset '{required}' "
                                   f"(found {cut_list(handle.keys(), 'dataset', limit=20)})")
        table = _read_image_meta(handle, path)
        averaged = handle["time_averaged_trial_averaged"]
        if averaged.ndim != 2 or averaged.shape[0] != len(table):
            raise DatasetError(f"{path}: time_averaged_trial_averaged has shape {averaged.shape}; expected "
                               f"({len(table)} images, n_sites)")
        if handle["images"].shape[0] != len(table):
            raise DatasetError(f"{path}: images has {handle['images'].shape[0]} rows but image_meta has {len(table)}")
        site_columns, sites = _read_sites(handle, path, averaged.shape[1])
        keep = np.ones(len(table), dtype=bool)
        if variations is not None:
            keep = table["variation"].isin(list(variations)).to_numpy()
            if not keep.any():
                raise DatasetError(f"{path}: no image with variation in {list(variations)} "
                                   f"(found {sorted(table['variation'].unique().tolist())})")
        trials, stimulus_ids, repetitions = _trials(handle, path, table, keep, site_columns)
    image_rows = ArrayImages(table["stimulus_id"], hdf5_path=path, dataset="images")
    stimuli = StimulusSet(table[keep].reset_index(drop=True), [image_rows], source=f"{path}:image_meta")
    assembly = make_assembly(trials, stimulus_ids, repetitions, sites, stimuli.table)
    return NeuralDataset(name=name or path.stem, assembly=assembly, stimuli=stimuli, stratify_by=stratify_by,
                         citation=citation, source=str(path), time_window_ms=TIME_WINDOW_MS)


def _trials(handle, path: Path, table: pd.DataFrame, keep: np.ndarray, site_columns: np.ndarray):
    """(n_presentations, n_sites) trials, their stimulus ids and repetition numbers, image by image."""
    blocks, ids, reps = [], [], []
    group = handle.get("time_averaged")
    variation = table["variation"].to_numpy()
    for level in pd.unique(variation[keep]):
        rows = np.flatnonzero(variation == level)  # every image of this level, in file order
        key = f"variation_level_{level}"
        if group is not None and key in group:
            data = group[key]
            if data.ndim != 3 or data.shape[1] != rows.size:
                raise DatasetError(f"{path}: time_averaged/{key} has shape {data.shape}; expected "
                                   f"(repetitions, {rows.size} images of variation {level}, sites)")
            values = np.asarray(data[()])[:, :, site_columns]  # (reps, images, sites)
            kept = keep[rows]
            values = values[:, kept, :].transpose(1, 0, 2)  # (images, reps, sites)
            n_images, n_reps, _ = values.shape
            blocks.append(values.reshape(n_images * n_reps, -1))
            ids.append(np.repeat(table["stimulus_id"].to_numpy()[rows[kept]], n_reps))
            reps.append(np.tile(np.arange(n_reps), n_images))
        else:
            chosen = rows[keep[rows]]
            values = np.asarray(handle["time_averaged_trial_averaged"][()])[np.ix_(chosen, site_columns)]
            blocks.append(values)
            ids.append(table["stimulus_id"].to_numpy()[chosen])
            reps.append(np.zeros(chosen.size, dtype=np.int64))
    trials = np.concatenate(blocks).astype(np.float32)
    present = ~np.isnan(trials).all(axis=1)
    return trials[present], np.concatenate(ids)[present], np.concatenate(reps)[present]
