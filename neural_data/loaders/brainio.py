"""Brain-Score / brainio NetCDF assemblies, read unchanged.

A brainio assembly file (e.g. `assy_dicarlo_MajajHong2015_public.nc`) holds one DataArray with dims
(neuroid, presentation, time_bin). Its MultiIndex levels are stored as plain coords along each dim:
`neuroid_id`, `region`, `animal`, `arr`, ... on neuroid; `image_id` (newer files: `stimulus_id`),
`repetition`, and sometimes stimulus metadata on presentation; `time_bin_start`/`time_bin_end` (ms).
Its stimulus set is a CSV (`image_id`, `object_name`, `category_name`, `variation`, filename column, ...)
plus a zip (or folder) of the images.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DatasetError, cut_list
from ..schema import NEUROID, PRESENTATION, NeuralDataset, make_assembly, normalize_stimulus_table
from ..stimuli import StimulusSet, image_source

BRAINIO_DIMS = {NEUROID, PRESENTATION, "time_bin"}


def read_brainio_array(path: str | os.PathLike, variable: str | None = None) -> xr.DataArray:
    """The DataArray of a brainio NetCDF file, loaded into memory, MultiIndexes flattened to coords."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NetCDF assembly not found")
    with xr.open_dataset(path) as dataset:
        names = list(dataset.data_vars)
        if variable is None:
            if len(names) != 1:
                raise DatasetError(f"{path}: holds {cut_list(names, 'data variable')}; pass variable=")
            variable = names[0]
        if variable not in names:
            raise DatasetError(f"{path}: no data variable '{variable}' (found {cut_list(names, 'data variable')})")
        array = dataset[variable].load()
    return array


def _flatten_multi_indexes(array: xr.DataArray) -> xr.DataArray:
    for dim in list(array.dims):
        if isinstance(array.indexes.get(dim), pd.MultiIndex):
            array = array.reset_index(dim)
    return array


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S" or (values.dtype == object and len(values) and isinstance(values[0], bytes)):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values


def _select_time_window(array: xr.DataArray, window, source: str) -> xr.DataArray:
    """Average the time bins inside `window` (ms); a single bin without a window is just dropped."""
    if "time_bin" not in array.dims:
        return array
    has_times = "time_bin_start" in array.coords and "time_bin_end" in array.coords
    if window is None or not has_times:
        if array.sizes["time_bin"] != 1:
            raise DatasetError(f"{source}: {array.sizes['time_bin']} time bins and no time window / no "
                               f"time_bin_start+time_bin_end coords to choose them by")
        return array.isel(time_bin=0, drop=True)
    start, end = float(window[0]), float(window[1])
    starts, ends = array["time_bin_start"].values, array["time_bin_end"].values
    inside = (starts >= start) & (ends <= end)
    if not inside.any():
        bins = [f"{s}-{e}" for s, e in zip(starts, ends)]
        raise DatasetError(f"{source}: no time bin inside {start:g}-{end:g} ms ({cut_list(bins, 'time bin')})")
    selected = array.isel(time_bin=np.flatnonzero(inside))
    return selected.mean("time_bin", skipna=True, keep_attrs=True).drop_vars(
        [c for c in ("time_bin_start", "time_bin_end") if c in selected.coords], errors="ignore")


def assembly_from_brainio(array: xr.DataArray, stimulus_table: pd.DataFrame | None = None,
                          time_window=(70, 170), source: str = "assembly") -> xr.DataArray:
    """brainio DataArray (any dim order, optional time_bin) -> trial-level assembly of this schema.

    `image_id` becomes `stimulus_id`; a missing `repetition` is numbered per stimulus in file order.
    Metadata from `stimulus_table` is merged by stimulus_id; presentation coords already in the file and
    absent from the table are kept.
    """
    array = _flatten_multi_indexes(array)
    unknown = set(array.dims) - BRAINIO_DIMS
    if unknown or not {NEUROID, PRESENTATION} <= set(array.dims):
        raise DatasetError(f"{source}: dims {tuple(array.dims)}; expected (neuroid, presentation[, time_bin])")
    array = _select_time_window(array, time_window, source)
    array = array.transpose(PRESENTATION, NEUROID)
    coords = {name: _decode(np.asarray(coord.values)) for name, coord in array.coords.items()
              if coord.dims in ((PRESENTATION,), (NEUROID,))}
    dims = {name: array[name].dims[0] for name in coords}
    if "stimulus_id" not in coords:
        if "image_id" not in coords:
            raise DatasetError(f"{source}: missing presentation coord 'stimulus_id' (or brainio's 'image_id')")
        coords["stimulus_id"], dims["stimulus_id"] = coords.pop("image_id"), PRESENTATION
    stimulus_ids = coords["stimulus_id"].astype(str)
    repetitions = coords.get("repetition")
    if repetitions is None:
        repetitions = pd.Series(stimulus_ids).groupby(stimulus_ids).cumcount().to_numpy()
    for required in ("neuroid_id", "region"):
        if required not in coords:
            raise DatasetError(f"{source}: missing neuroid coord '{required}'")
    neuroids = pd.DataFrame({n: v for n, v in coords.items() if dims[n] == NEUROID})
    in_file = pd.DataFrame({n: v for n, v in coords.items()
                            if dims[n] == PRESENTATION and n not in ("repetition",)})
    table = _merge_metadata(in_file.drop_duplicates("stimulus_id"), stimulus_table)
    attrs = {k: v for k, v in array.attrs.items() if isinstance(v, (str, int, float))}
    return make_assembly(array.values, stimulus_ids, repetitions, neuroids, table, attrs=attrs)


def _merge_metadata(in_file: pd.DataFrame, stimulus_table: pd.DataFrame | None) -> pd.DataFrame:
    in_file = normalize_stimulus_table(in_file)
    if stimulus_table is None:
        return in_file
    extra = [c for c in in_file.columns if c != "stimulus_id" and c not in stimulus_table.columns]
    if not extra:
        return stimulus_table
    return stimulus_table.merge(in_file[["stimulus_id", *extra]], on="stimulus_id", how="left")


def find_stimulus_csv(near: Path, stimulus_ids: set[str]) -> Path | None:
    """The first CSV beside `near` (or one folder down) whose id column covers every stimulus id."""
    folder = near if near.is_dir() else near.parent
    for path in sorted(folder.glob("*.csv")) + sorted(folder.glob("*/*.csv")):
        try:
            table = normalize_stimulus_table(pd.read_csv(path))
        except (ValueError, OSError):
            continue
        if "stimulus_id" in table.columns and stimulus_ids <= set(table["stimulus_id"]):
            return path
    return None


def default_images(csv_path: Path) -> Path | None:
    """Images for a stimulus CSV: a zip with the same stem, else the CSV's own folder if it holds images."""
    same_stem = csv_path.with_suffix(".zip")
    if same_stem.is_file():
        return same_stem
    zips = sorted(csv_path.parent.glob("*.zip"))
    if len(zips) == 1:
        return zips[0]
    return csv_path.parent


def load_brainio(path: str | os.PathLike, *, stimuli: str | os.PathLike | None = None,
                 images: str | os.PathLike | list | None = None, variable: str | None = None,
                 name: str | None = None, time_window=(70, 170), stratify_by: str = "category_name",
                 citation: str = "", id_column: str | None = None) -> NeuralDataset:
    """Load a brainio NetCDF assembly with its stimulus CSV and images (zip or folder).

    `stimuli`: the stimulus CSV (default: a CSV beside the file, or one folder down, that lists every
    presented stimulus). `images`: zip(s) or folder(s) (default: a zip with the CSV's stem, the only zip
    beside it, or the CSV's folder). `time_window`: (start, end) ms whose bins are averaged.
    `id_column`: the CSV's stimulus id column when it is neither `stimulus_id` nor `image_id`.
    """
    path = Path(path)
    raw = read_brainio_array(path, variable)
    ids_key = "stimulus_id" if "stimulus_id" in raw.coords else "image_id"
    if ids_key not in raw.coords:
        raise DatasetError(f"{path}: missing presentation coord 'stimulus_id' (or brainio's 'image_id')")
    presented = set(_decode(np.asarray(raw[ids_key].values)).astype(str))
    csv_path = Path(stimuli) if stimuli is not None else find_stimulus_csv(path, presented)
    if csv_path is None:
        raise FileNotFoundError(f"{path}: no stimulus CSV listing its {len(presented)} images found beside it; "
                                f"pass stimuli=<csv> (columns image_id or stimulus_id, object_name, ...)")
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: stimulus CSV not found")
    table = normalize_stimulus_table(pd.read_csv(csv_path), id_column, source=str(csv_path))
    table = table[table["stimulus_id"].isin(presented)].reset_index(drop=True)
    locations = images if isinstance(images, (list, tuple)) else [images or default_images(csv_path)]
    stimulus_set = StimulusSet(table, [image_source(loc) for loc in locations], source=str(csv_path))
    assembly = assembly_from_brainio(raw, stimulus_set.table, time_window=time_window, source=str(path))
    stimulus_set = StimulusSet(_presented_metadata(assembly, stimulus_set.table), stimulus_set.sources,
                               source=str(csv_path))
    return NeuralDataset(name=name or raw.name or path.stem, assembly=assembly, stimuli=stimulus_set,
                         stratify_by=stratify_by, citation=citation, source=str(path),
                         time_window_ms=tuple(time_window) if time_window else None)


def _presented_metadata(assembly: xr.DataArray, table: pd.DataFrame) -> pd.DataFrame:
    """The stimulus table plus metadata coords that only the assembly carried."""
    extra = [name for name, coord in assembly.coords.items()
             if coord.dims == (PRESENTATION,) and name not in table.columns and name != "repetition"]
    if not extra:
        return table
    per_stimulus = pd.DataFrame({name: assembly[name].values for name in ["stimulus_id", *extra]})
    return table.merge(per_stimulus.drop_duplicates("stimulus_id"), on="stimulus_id", how="left")
