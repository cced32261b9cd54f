"""Small datasets written in each on-disk schema, for the neural_data tests."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

CATEGORIES = ("Animals", "Cars", "Faces")
SHARED_DATA_ENV = "NEURALIGN_SHARED_DATA"


def shared_data_dir() -> Path:
    """The real-data folder: $NEURALIGN_SHARED_DATA, else `shared/data` in the repository's parent folder."""
    configured = os.environ.get(SHARED_DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    repository = Path(__file__).resolve().parents[2]
    return repository.parent / "shared" / "data"


def require_real_file(relative: str) -> Path:
    """A file of the real-data folder; skips the calling test, saying where it looked, when it is absent."""
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"optional real data not found: {path} (set {SHARED_DATA_ENV} to the folder that holds "
                    f"{relative})")
    return path


def stimulus_table(per_category: int = 4, variations=(0, 3, 6)) -> pd.DataFrame:
    rows = []
    for c, category in enumerate(CATEGORIES):
        for i in range(per_category):
            rows.append({"image_id": f"img{c}{i:03d}", "object_name": f"{category.lower()}{i % 2}",
                         "category_name": category, "variation": variations[i % len(variations)],
                         "image_file_name": f"img{c}{i:03d}.png"})
    return pd.DataFrame(rows)


def write_images(folder: Path, ids, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, stimulus_id in enumerate(ids):
        pixels = np.full((size, size), (index * 37) % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{stimulus_id}.png")


def write_zip(archive: Path, ids, size: int = 8) -> None:
    staging = archive.parent / (archive.stem + "_png")
    write_images(staging, ids, size)
    with zipfile.ZipFile(archive, "w") as handle:
        for stimulus_id in ids:  # brainio zips keep the images under a folder
            handle.write(staging / f"{stimulus_id}.png", f"hvm/{stimulus_id}.png")


def site_table(n_v4: int = 3, n_it: int = 4, excluded: int = 0) -> pd.DataFrame:
    ids = [f"Chabo_L_P_{i}_0" for i in range(n_v4)] + [f"Tito_L_M_{i}_0" for i in range(n_it)]
    regions = ["V4"] * n_v4 + ["IT"] * n_it
    animals = ["Chabo"] * n_v4 + ["Tito"] * n_it
    arrays = ["P"] * n_v4 + ["M"] * n_it
    # ids Brain-Score drops as unreliable (from the real exclusion list)
    for k, bad in enumerate(["Tito_L_P_8_5", "Tito_L_P_7_3", "Tito_L_P_7_5"][:excluded]):
        ids.append(bad), regions.append("V4"), animals.append("Tito"), arrays.append("P")
    return pd.DataFrame({"neuroid_id": ids, "region": regions, "animal": animals, "arr": arrays})


def trial_responses(n_sites: int, n_stimuli: int, reps: int, seed: int = 0) -> np.ndarray:
    """(neuroid, stimulus, repetition) with stimulus-specific means so averages are informative."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_sites, n_stimuli, 1))
    return (means + 0.3 * rng.normal(size=(n_sites, n_stimuli, reps))).astype(np.float32)


def write_folder_dataset(root: Path, per_category: int = 4, reps: int = 3, images: str = "folder",
                         responses: str = "npy", manifest_extra: str = "", stratify_by: str = "category_name") -> Path:
    """A folder-format dataset; returns its path. images: 'folder' | 'zip'; responses: 'npy' | 'h5' | 'nc'."""
    root.mkdir(parents=True, exist_ok=True)
    table = stimulus_table(per_category).rename(columns={"image_id": "stimulus_id"})
    table.to_csv(root / "stimuli.csv", index=False)
    if images == "folder":
        write_images(root / "images", table["stimulus_id"])
    else:
        write_zip(root / "images.zip", table["stimulus_id"])
    sites = site_table()
    sites.to_csv(root / "neuroids.csv", index=False)
    array = trial_responses(len(sites), len(table), reps)
    array[0, 1, 2] = np.nan  # a missing repeat
    if responses == "npy":
        np.save(root / "responses.npy", array)
    elif responses == "h5":
        with h5py.File(root / "responses.h5", "w") as handle:
            handle["responses"] = array
    else:
        write_brainio_netcdf(root / "responses.nc", array, table.rename(columns={"stimulus_id": "image_id"}), sites)
    (root / "dataset.toml").write_text(
        f'name = "tiny"\ncitation = "test"\nstratify_by = "{stratify_by}"\nregions = ["V4", "IT"]\n'
        'time_window_ms = [70, 170]\n' + manifest_extra)
    return root


def write_brainio_netcdf(path: Path, array: np.ndarray, table: pd.DataFrame, sites: pd.DataFrame,
                         time_bins=((70, 170),), variable: str = "dicarlo.Majaj2015") -> None:
    """Write (neuroid, stimulus, repetition) trials like brainio does: dims (neuroid, presentation, time_bin),
    flat MultiIndex-level coords, image_id + repetition on presentation, time_bin_start/end."""
    n_sites, n_stimuli, reps = array.shape
    order = np.arange(n_stimuli * reps)
    presentations = array.reshape(n_sites, n_stimuli * reps)[:, order]  # stimulus-major, as assembled
    values = np.repeat(presentations[:, :, None], len(time_bins), axis=2)
    for k in range(1, len(time_bins)):  # later bins differ so that window selection is visible
        values[:, :, k] += 100.0 * k
    da = xr.DataArray(
        values, dims=("neuroid", "presentation", "time_bin"),
        coords={
            **{column: ("neuroid", sites[column].to_numpy()) for column in sites.columns},
            "image_id": ("presentation", np.repeat(table["image_id"].to_numpy(), reps)),
            "repetition": ("presentation", np.tile(np.arange(reps), n_stimuli)),
            "variation": ("presentation", np.repeat(table["variation"].to_numpy(), reps)),
            "time_bin_start": ("time_bin", [start for start, _ in time_bins]),
            "time_bin_end": ("time_bin", [end for _, end in time_bins]),
        },
        name=variable, attrs={"stimulus_set_name": "dicarlo.hvm"},
    )
    da.to_netcdf(path, engine="h5netcdf")


def write_lab_hdf5(path: Path, per_category: int = 4, reps=(2, 3, 4), size: int = 8, seed: int = 0):
    """A file in the layout of the DiCarlo lab's ventral_neural_data.hdf5; returns (table, averaged, trials)."""
    table = stimulus_table(per_category)
    n_images, n_sites = len(table), 7
    rng = np.random.default_rng(seed)
    averaged = rng.normal(size=(n_images, n_sites)).astype(np.float32)
    trials = {}
    with h5py.File(path, "w") as handle:
        handle["images"] = rng.uniform(0, 1, size=(n_images, size, size)).astype(np.float32)
        meta = handle.create_group("image_meta")
        meta["obj"] = table["object_name"].to_numpy().astype("S")
        meta["category"] = table["category_name"].to_numpy().astype("S")
        meta["var"] = np.array([f"V{v}" for v in table["variation"]], dtype="S")
        meta["id"] = table["image_id"].to_numpy().astype("S")
        meta["s"] = np.linspace(0.7, 1.3, n_images)
        neural = handle.create_group("neural_meta")
        neural["V4_NEURONS"] = np.array([0, 2, 4])
        neural["IT_NEURONS"] = np.array([1, 3, 5, 6])
        handle["time_averaged_trial_averaged"] = averaged
        group = handle.create_group("time_averaged")
        for level, n_reps in zip((0, 3, 6), reps):
            count = int((table["variation"] == level).sum())
            data = rng.normal(size=(n_reps, count, n_sites)).astype(np.float32)
            group[f"variation_level_{level}"] = data
            trials[level] = data
    return table, averaged, trials
