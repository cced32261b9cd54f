"""Majaj, Hong et al. (2015) as the paper uses it, and Brain-Score's public/private selections.

The recordings are not shipped: point `data_root=` (or the environment variable NEURALIGN_MAJAJHONG2015)
at either
- Brain-Score/brainio files: `assy_dicarlo_MajajHong2015_public.nc` and/or `..._private.nc` (or one
  combined `.nc`), with the HvM stimulus CSV and images zip (or folder) beside them; or
- the DiCarlo lab file `ventral_neural_data.hdf5`.
A file path works too. Selections:
- "paper": variations 3 and 6 (5120 images), 70-170 ms, repetitions kept (average with `.averaged()`);
- "public": variations 0 and 3 (3200 images); "private": variation 6 (2560 images).
All drop the 40 unreliable `Tito_L_P` V4 sites that Brain-Score's packaging drops (168 IT + 88 V4 remain).
Train/test splits are stratified by `object_name`: the paper (Appendix B.5) splits "75-25 within each object
category" of the "64 object categories", i.e. within each of the 64 objects (80 images each in V3+V6).
"""
from __future__ import annotations

import os
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DataNotAvailableError, DatasetError
from .loaders.brainio import load_brainio
from .loaders.dicarlo_hdf5 import load_dicarlo_hdf5
from .schema import NEUROID, PRESENTATION, NeuralDataset
from .stimuli import StimulusSet
from .validate import validate

STRATIFY_BY = "object_name"  # the paper's 75/25 split is within each of the 64 objects

ENV_VAR = "NEURALIGN_MAJAJHONG2015"
SELECTIONS = {"paper": (3, 6), "public": (0, 3), "private": (6,)}
NAMES = {"paper": "MajajHong2015", "public": "MajajHong2015.public", "private": "MajajHong2015.private"}
TIME_WINDOW_MS = (70, 170)
CITATION = ("Majaj, N. J., Hong, H., Solomon, E. A., and DiCarlo, J. J. Simple learned weighted sums of "
            "inferior temporal neuronal firing rates accurately predict human core object recognition "
            "performance. J. Neurosci. 35:13402-13418, 2015.")
ACCEPTED = ("a folder or file with Brain-Score's assy_dicarlo_MajajHong2015_public.nc / _private.nc (plus the "
            "HvM stimulus CSV and images zip or folder beside them) or the lab's ventral_neural_data.hdf5")


def excluded_sites() -> list[str]:
    """The 40 Tito_L_P V4 neuroid ids Brain-Score drops."""
    text = resources.files("neural_data").joinpath("resources/majajhong2015_excluded_sites.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def resolve_data_root(given=None) -> Path:
    """The user's MajajHong2015 location: `given`, else $NEURALIGN_MAJAJHONG2015; a clear error if neither exists."""
    location = given or os.environ.get(ENV_VAR)
    if not location:
        raise DataNotAvailableError(f"MajajHong2015 needs the recordings, which are not shipped: pass "
                                    f"data_root=<path> or set {ENV_VAR}=<path> to {ACCEPTED}")
    path = Path(location).expanduser()
    if not path.exists():
        source = "data_root" if given else ENV_VAR
        raise DataNotAvailableError(f"{path}: not found (from {source}); expected {ACCEPTED}")
    return path


def load_majajhong2015(selection: str = "paper", data_root=None, *, stimuli=None, images=None,
                       id_column: str | None = None, check_images: bool = True,
                       min_per_category: int = 4) -> NeuralDataset:
    """Load a MajajHong2015 selection ("paper", "public" or "private") from the user's files.

    For brainio files, `stimuli` (CSV), `images` (zip or folder) and `id_column` override what is found
    beside the assemblies.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown MajajHong2015 selection '{selection}'; valid: {', '.join(SELECTIONS)}")
    root = resolve_data_root(data_root)
    variations = SELECTIONS[selection]
    netcdfs, hdf5s = _find_files(root)
    if netcdfs:
        dataset = _from_brainio(_needed_netcdfs(netcdfs, variations, root), stimuli=stimuli, images=images,
                                id_column=id_column)
    elif hdf5s:
        dataset = load_dicarlo_hdf5(hdf5s[0])
    else:
        raise DataNotAvailableError(f"{root}: no .nc or .hdf5 file found; expected {ACCEPTED}")
    dataset = _select(dataset, variations, NAMES[selection])
    validate(dataset.assembly, dataset.stimuli, source=dataset.source, stratify_by=STRATIFY_BY,
             check_images=check_images, min_per_category=min_per_category)
    return dataset


def _find_files(root: Path) -> tuple[list[Path], list[Path]]:
    if root.is_file():
        return ([root], []) if root.suffix == ".nc" else ([], [root])
    netcdfs = sorted(root.glob("*.nc"))
    hdf5s = sorted(list(root.glob("*.hdf5")) + list(root.glob("*.h5")))
    return netcdfs, hdf5s


def _needed_netcdfs(netcdfs: list[Path], variations, root: Path) -> list[Path]:
    """public.nc holds variations 0 and 3, private.nc variation 6; any other .nc is taken to hold all."""
    combined = [p for p in netcdfs if "public" not in p.name and "private" not in p.name]
    if combined:
        return combined[:1]
    wanted = {"public" for v in variations if v in (0, 3)} | {"private" for v in variations if v == 6}
    chosen = []
    for part in sorted(wanted):
        matches = [p for p in netcdfs if part in p.name]
        if not matches:
            raise DataNotAvailableError(f"{root}: variations {list(variations)} need the '{part}' assembly "
                                        f"(e.g. assy_dicarlo_MajajHong2015_{part}.nc), found only "
                                        f"{', '.join(p.name for p in netcdfs)}")
        chosen.append(matches[0])
    return chosen


def _from_brainio(paths: list[Path], stimuli=None, images=None, id_column=None) -> NeuralDataset:
    parts = [load_brainio(path, stimuli=stimuli, images=images, time_window=TIME_WINDOW_MS, id_column=id_column)
             for path in paths]
    if len(parts) == 1:
        return parts[0]
    return concat_datasets(parts, source=", ".join(map(str, paths)))


def concat_datasets(parts: list[NeuralDataset], source: str) -> NeuralDataset:
    """Stack the presentations of datasets recorded from the same sites (aligned by neuroid_id)."""
    first = parts[0].assembly
    site_ids = list(first["neuroid_id"].values)
    assemblies = []
    for part in parts:
        ids = list(part.assembly["neuroid_id"].values)
        if set(ids) != set(site_ids):
            raise DatasetError(f"{part.source}: its sites differ from those of {parts[0].source}; cannot combine")
        order = [ids.index(site) for site in site_ids]
        assemblies.append(part.assembly.isel(neuroid=order))
    shared = set.intersection(*({n for n, c in a.coords.items() if c.dims == (PRESENTATION,)} for a in assemblies))
    coords = {name: (PRESENTATION, np.concatenate([a[name].values for a in assemblies])) for name in sorted(shared)}
    coords.update({name: (NEUROID, c.values) for name, c in first.coords.items() if c.dims == (NEUROID,)})
    assembly = xr.DataArray(np.concatenate([a.values for a in assemblies]), dims=(PRESENTATION, NEUROID),
                            coords=coords, attrs=dict(first.attrs))
    table = pd.concat([p.stimuli.table for p in parts], ignore_index=True).drop_duplicates("stimulus_id")
    sources = [s for p in parts for s in p.stimuli.sources]
    stimuli = StimulusSet(table, sources, source=", ".join(p.stimuli.source for p in parts))
    return NeuralDataset(name=parts[0].name, assembly=assembly, stimuli=stimuli, source=source,
                         time_window_ms=parts[0].time_window_ms)


def _select(dataset: NeuralDataset, variations, name: str) -> NeuralDataset:
    assembly = dataset.assembly
    if "variation" not in assembly.coords:
        raise DatasetError(f"{dataset.source}: no 'variation' in the assembly or its stimulus table; cannot select "
                           f"variations {list(variations)}")
    keep = np.isin(assembly["variation"].values.astype(int), list(variations))
    if not keep.any():
        found = sorted(set(assembly["variation"].values.astype(int).tolist()))
        raise DatasetError(f"{dataset.source}: no presentation with variation in {list(variations)} (found {found})")
    site_ids = assembly["neuroid_id"].values.astype(str)
    good_sites = ~np.isin(site_ids, excluded_sites())
    assembly = assembly.isel(presentation=np.flatnonzero(keep), neuroid=np.flatnonzero(good_sites))
    presented = set(assembly["stimulus_id"].values.astype(str))
    table = dataset.stimuli.table
    stimuli = StimulusSet(table[table["stimulus_id"].isin(presented)], dataset.stimuli.sources,
                          source=dataset.stimuli.source)
    regions = pd.Series(assembly["region"].values.astype(str)).value_counts().to_dict()
    if (regions.get("IT"), regions.get("V4")) != (168, 88):
        warnings.warn(f"{dataset.source}: {regions} sites after dropping unreliable ones; the paper used 168 IT + "
                      f"88 V4", stacklevel=3)
    return NeuralDataset(name=name, assembly=assembly, stimuli=stimuli, stratify_by=STRATIFY_BY,
                         citation=CITATION, source=dataset.source, time_window_ms=TIME_WINDOW_MS)
