"""Readers of real formats: brainio NetCDF (synthetic files in its schema + the real excerpt), the lab HDF5,
and the MajajHong2015 selections."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import neural_data
from neural_data import DataNotAvailableError, DatasetError
from neural_data.loaders import assembly_from_brainio, load_brainio, load_dicarlo_hdf5
from neural_data.majajhong import excluded_sites
from nd_fixtures import (require_real_file, site_table, stimulus_table, trial_responses, write_brainio_netcdf,
                         write_lab_hdf5, write_zip)


def write_brainio_release(folder: Path, per_category: int = 12, reps: int = 3, split: bool = True):
    """assy_..._public.nc (V0+V3) and _private.nc (V6), or one combined .nc, + hvm CSV + images zip."""
    folder.mkdir(parents=True, exist_ok=True)
    table = stimulus_table(per_category, variations=(0, 3, 6, 6, 3, 6))
    sites = site_table(excluded=2)
    array = trial_responses(len(sites), len(table), reps)
    table.to_csv(folder / "image_dicarlo_hvm.csv", index=False)
    write_zip(folder / "image_dicarlo_hvm.zip", table["image_id"])
    parts = {"public": [0, 3], "private": [6]} if split else {"all": [0, 3, 6]}
    for part, levels in parts.items():
        rows = np.flatnonzero(table["variation"].isin(levels))
        write_brainio_netcdf(folder / f"assy_dicarlo_MajajHong2015_{part}.nc", array[:, rows],
                             table.iloc[rows].reset_index(drop=True), sites)
    return table, sites, array


def test_brainio_file_is_read_unchanged(tmp_path):
    table, sites, array = write_brainio_release(tmp_path, split=False)
    dataset = load_brainio(tmp_path / "assy_dicarlo_MajajHong2015_all.nc")
    assembly = dataset.assembly
    assert assembly.dims == ("presentation", "neuroid") and assembly.shape == (len(table) * 3, len(sites))
    assert list(assembly["neuroid_id"].values) == list(sites["neuroid_id"])
    assert list(assembly["arr"].values) == list(sites["arr"])
    assert set(assembly["stimulus_id"].values) == set(table["image_id"])
    np.testing.assert_allclose(dataset.averaged().values, array.mean(axis=2).T, rtol=1e-6, atol=1e-6)
    assert list(dataset.averaged()["category_name"].values) == list(table["category_name"])
    assert dataset.stimuli.missing_images() == []
    assert dataset.time_window_ms == (70, 170) and dataset.name == "dicarlo.Majaj2015"


def test_brainio_time_window_averages_the_bins_inside(tmp_path):
    table = stimulus_table(4)
    sites = site_table()
    array = trial_responses(len(sites), len(table), 2)
    path = tmp_path / "assy.nc"
    write_brainio_netcdf(path, array, table, sites, time_bins=((70, 120), (120, 170), (170, 220)))
    raw = xr.open_dataarray(path).load()
    inside = assembly_from_brainio(raw, time_window=(70, 170))
    np.testing.assert_allclose(inside.values, raw.isel(time_bin=[0, 1]).mean("time_bin").T.values, rtol=1e-6)
    late = assembly_from_brainio(raw, time_window=(170, 220))
    np.testing.assert_allclose(late.values - inside.values, 150.0, rtol=1e-5)  # fixture adds 100 per later bin
    with pytest.raises(DatasetError, match="no time bin inside 0-50 ms"):
        assembly_from_brainio(raw, time_window=(0, 50), source=str(path))


def test_brainio_multiindex_assembly_is_flattened():
    table = stimulus_table(4)
    sites = site_table()
    values = trial_responses(len(sites), len(table), 1)[:, :, 0]
    da = xr.DataArray(values, dims=("neuroid", "presentation"),
                      coords={"neuroid_id": ("neuroid", sites["neuroid_id"]), "region": ("neuroid", sites["region"]),
                              "image_id": ("presentation", table["image_id"]),
                              "object_name": ("presentation", table["object_name"])})
    da = da.set_index(neuroid=["neuroid_id", "region"], presentation=["image_id", "object_name"])
    assembly = assembly_from_brainio(da, time_window=None)
    assert list(assembly["stimulus_id"].values) == list(table["image_id"])
    assert list(assembly["object_name"].values) == list(table["object_name"])
    assert list(assembly["repetition"].values) == [0] * len(table)
    np.testing.assert_array_equal(assembly.values, values.T)


def test_brainio_missing_image_id_is_named(tmp_path):
    da = xr.DataArray(np.zeros((2, 3)), dims=("neuroid", "presentation"),
                      coords={"neuroid_id": ("neuroid", ["a", "b"]), "region": ("neuroid", ["IT", "IT"])})
    with pytest.raises(DatasetError, match="x.nc: missing presentation coord 'stimulus_id'"):
        assembly_from_brainio(da, source="x.nc")


def test_majajhong_paper_selection_from_public_and_private(tmp_path):
    table, sites, _ = write_brainio_release(tmp_path / "mh")
    with pytest.warns(UserWarning, match="the paper used 168 IT"):  # the fixture has only 7 good sites
        dataset = neural_data.load("MajajHong2015", data_root=tmp_path / "mh")
    assert set(dataset.averaged()["variation"].values.tolist()) == {3, 6}
    assert set(dataset.stimuli.table["variation"]) == {3, 6}
    expected = set(table.loc[table["variation"].isin([3, 6]), "image_id"])
    assert set(dataset.stimuli.stimulus_ids) == expected
    kept = set(dataset.assembly["neuroid_id"].values)
    assert kept == set(sites["neuroid_id"]) - set(excluded_sites()) and len(kept) == 7
    assert dataset.name == "MajajHong2015" and "Majaj" in dataset.citation


def test_majajhong_public_private_and_env_var(tmp_path, monkeypatch):
    table, _, _ = write_brainio_release(tmp_path / "mh")
    monkeypatch.setenv("NEURALIGN_MAJAJHONG2015", str(tmp_path / "mh"))
    with pytest.warns(UserWarning, match="168 IT"):  # the fixture has 2 images per object, the paper 80
        public = neural_data.load("MajajHong2015.public", min_per_category=2)
        private = neural_data.load("MajajHong2015.private", min_per_category=2)
    assert public.stratify_by == "object_name"  # the paper's split is within each of the 64 objects
    assert set(public.stimuli.table["variation"]) == {0, 3}
    assert set(private.stimuli.table["variation"]) == {6}
    assert len(public.stimuli) + len(private.stimuli) == len(table)
    assert "Tito_L_P_8_5" not in set(public.assembly["neuroid_id"].values)


def test_majajhong_without_data_says_where_to_point(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURALIGN_MAJAJHONG2015", raising=False)
    with pytest.raises(DataNotAvailableError, match="NEURALIGN_MAJAJHONG2015"):
        neural_data.load("MajajHong2015")
    with pytest.raises(FileNotFoundError, match="nowhere: not found"):
        neural_data.load("MajajHong2015", data_root=str(tmp_path / "nowhere"))
    (tmp_path / "only_public").mkdir()
    write_brainio_release(tmp_path / "only_public")
    (tmp_path / "only_public" / "assy_dicarlo_MajajHong2015_private.nc").unlink()
    with pytest.raises(DataNotAvailableError, match="need the 'private' assembly"):
        neural_data.load("MajajHong2015", data_root=tmp_path / "only_public")


def test_lab_hdf5_is_read_unchanged(tmp_path):
    table, averaged, trials = write_lab_hdf5(tmp_path / "ventral_neural_data.hdf5")
    dataset = load_dicarlo_hdf5(tmp_path / "ventral_neural_data.hdf5")
    assembly = dataset.assembly
    assert list(assembly["region"].values) == ["V4"] * 3 + ["IT"] * 4
    assert list(assembly["neuroid_id"].values)[:2] == ["V4_000", "V4_002"]
    assert len(assembly) == sum(t.shape[0] * t.shape[1] for t in trials.values())
    # the trial data of variation 3, image k, repetition r, site column 2 (the second V4 site)
    v3_ids = table.loc[table["variation"] == 3, "image_id"].tolist()
    picked = assembly.isel(presentation=np.flatnonzero((assembly["stimulus_id"].values == v3_ids[1])
                                                       & (assembly["repetition"].values == 2)))
    assert picked.shape[0] == 1
    np.testing.assert_allclose(picked.values[0, 1], trials[3][2, 1, 2])
    means = dataset.averaged()
    np.testing.assert_allclose(means.sel(neuroid=1).values[table["variation"].to_numpy() == 6],
                               trials[6][:, :, 2].mean(axis=0), rtol=1e-5)
    assert set(dataset.stimuli.table["variation"]) == {0, 3, 6}
    assert dataset.stimuli.table["category_name"].tolist() == table["category_name"].tolist()
    image = np.asarray(dataset.stimuli.open(table["image_id"][0]))
    assert image.dtype == np.uint8 and image.shape == (8, 8)


def test_lab_hdf5_variation_selection_and_majajhong(tmp_path):
    write_lab_hdf5(tmp_path / "ventral_neural_data.hdf5", per_category=12)
    selected = load_dicarlo_hdf5(tmp_path / "ventral_neural_data.hdf5", variations=[3, 6])
    assert set(selected.assembly["variation"].values.tolist()) == {3, 6}
    with pytest.warns(UserWarning):
        paper = neural_data.load("MajajHong2015", data_root=tmp_path)
    assert set(paper.stimuli.table["variation"]) == {3, 6} and paper.sites_per_region() == {"V4": 3, "IT": 4}


def test_lab_hdf5_without_trials_uses_the_averages(tmp_path):
    import h5py

    table, averaged, _ = write_lab_hdf5(tmp_path / "v.hdf5")
    with h5py.File(tmp_path / "v.hdf5", "a") as handle:
        del handle["time_averaged"]
    dataset = load_dicarlo_hdf5(tmp_path / "v.hdf5")
    np.testing.assert_allclose(dataset.averaged().values, averaged[:, [0, 2, 4, 1, 3, 5, 6]])


def test_lab_hdf5_missing_field_is_named(tmp_path):
    import h5py

    write_lab_hdf5(tmp_path / "v.hdf5")
    with h5py.File(tmp_path / "v.hdf5", "a") as handle:
        del handle["neural_meta/IT_NEURONS"]
    with pytest.raises(DatasetError, match=r"v.hdf5: missing neural_meta/IT_NEURONS"):
        load_dicarlo_hdf5(tmp_path / "v.hdf5")


@pytest.fixture()
def excerpt() -> Path:
    """The folder of the real MajajHong2015 excerpt (test_data.nc and its 25 images)."""
    require_real_file("majajhong2015_subset/images_brainio_collection/test_images.csv")
    return require_real_file("majajhong2015_subset/test_data.nc").parent


def test_real_brainio_excerpt(excerpt):
    dataset = neural_data.load(str(excerpt / "test_data.nc"))
    assembly = dataset.assembly
    assert assembly.dims == ("presentation", "neuroid") and assembly.shape == (700, 296)
    assert dataset.sites_per_region() == {"IT": 168, "V4": 128}
    assert dataset.n_repetitions == {"min": 28, "median": 28, "max": 28}
    assert len(dataset.stimuli) == 25 and dataset.stimuli.missing_images() == []
    raw = xr.open_dataarray(excerpt / "test_data.nc").load()
    means = raw.isel(time_bin=0).groupby("image_id").mean("presentation")
    averaged = dataset.averaged()
    np.testing.assert_allclose(averaged.values, means.sel(image_id=averaged["stimulus_id"].values).T.values,
                               rtol=1e-5, atol=1e-6)  # xarray sums in float32
    csv = pd.read_csv(excerpt / "images_brainio_collection" / "test_images.csv").set_index("image_id")
    assert list(averaged["object_name"].values) == list(csv.loc[averaged["stimulus_id"].values, "object_name"])
    assert dataset.stimuli.open(dataset.stimuli.stimulus_ids[0]).size == (256, 256)
    assert dataset.stimuli.unreadable_images() == {}  # every real PNG decodes
    assert neural_data.site_problems(averaged) == {"constant": [], "partly_nan": []}
    tito_p = [n for n in assembly["neuroid_id"].values if n.startswith("Tito_L_P")]
    assert set(excluded_sites()) <= set(tito_p)  # the exclusion list names real sites


def test_real_excerpt_through_the_majajhong_selection(excerpt):
    """The excerpt is all variation 0 (public); the HvM table supplies the variations. Brain-Score's
    exclusion list leaves exactly 88 of the 128 V4 sites."""
    hvm_meta = require_real_file("hvm_meta.csv")
    dataset = neural_data.load("MajajHong2015.public", data_root=excerpt / "test_data.nc",
                               stimuli=hvm_meta, id_column="id",
                               images=excerpt / "images_brainio_collection", min_per_category=1)
    assert dataset.sites_per_region() == {"IT": 168, "V4": 88}
    assert len(dataset.stimuli) == 25 and set(dataset.stimuli.table["variation"]) == {0}
    assert dataset.stimuli.missing_images() == []
    with pytest.raises(DatasetError, match=r"no presentation with variation in \[6\]"):
        neural_data.load("MajajHong2015.private", data_root=excerpt / "test_data.nc",
                         stimuli=hvm_meta, id_column="id",
                         images=excerpt / "images_brainio_collection")
