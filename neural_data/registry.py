"""Dataset names -> loader functions.

Register in code with the `@register("Name")` decorator, or from another installed package through the
entry-point group `neuralign.datasets`, e.g. in that package's pyproject.toml:

    [project.entry-points."neuralign.datasets"]
    MyLab2024 = "mylab.datasets:load_mylab2024"

A loader takes keyword arguments only and returns a `NeuralDataset`. When its data are not on this
machine it raises `DataNotAvailableError` saying where to point it.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable

from .errors import UnknownDatasetError
from .schema import NeuralDataset

ENTRY_POINT_GROUP = "neuralign.datasets"

_LOADERS: dict[str, Callable[..., NeuralDataset]] = {}
_ENTRY_POINTS_READ = False


def register(name: str) -> Callable:
    """Decorator: make `loader(**kwargs) -> NeuralDataset` loadable as `neural_data.load(name)`."""
    def decorate(loader: Callable[..., NeuralDataset]) -> Callable[..., NeuralDataset]:
        existing = _LOADERS.get(name)
        if existing is not None and existing is not loader:
            raise ValueError(f"dataset name '{name}' is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        _LOADERS[name] = loader
        return loader
    return decorate


def _read_entry_points() -> None:
    global _ENTRY_POINTS_READ
    if _ENTRY_POINTS_READ:
        return
    _ENTRY_POINTS_READ = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in _LOADERS:
            _LOADERS[entry_point.name] = _deferred(entry_point)


def _deferred(entry_point: importlib.metadata.EntryPoint) -> Callable[..., NeuralDataset]:
    """Import a plugin's loader only when its dataset is loaded."""
    def loader(**kwargs) -> NeuralDataset:
        return entry_point.load()(**kwargs)
    loader.__doc__ = f"(from entry point {entry_point.value})"
    loader.entry_point = entry_point
    return loader


def list_datasets() -> list[str]:
    """Every registered dataset name (built-in and from entry points), sorted."""
    _read_entry_points()
    return sorted(_LOADERS)


def _unknown(name: str) -> UnknownDatasetError:
    return UnknownDatasetError(f"unknown dataset '{name}': not a registered name and not an existing path; "
                               f"registered: {', '.join(sorted(_LOADERS))}")


def loader_for(name: str) -> Callable[..., NeuralDataset]:
    _read_entry_points()
    if name not in _LOADERS:
        raise _unknown(name)
    return _LOADERS[name]


def describe(name: str) -> str:
    """First line of the loader's docstring."""
    doc = (loader_for(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def load(name_or_path: str | Path, **kwargs) -> NeuralDataset:
    """A registered dataset by name, or a dataset on disk by path.

    Paths: a folder with dataset.toml (folder format), a brainio `.nc` assembly, or a DiCarlo-lab
    `.hdf5`/`.h5` file. Keyword arguments go to the loader.
    """
    from .loaders import load_brainio, load_dicarlo_hdf5, load_folder

    _read_entry_points()
    if isinstance(name_or_path, str) and name_or_path in _LOADERS:
        return _LOADERS[name_or_path](**kwargs)
    path = Path(name_or_path)
    if path.is_dir():
        return load_folder(path, **kwargs)
    if path.is_file() and path.suffix == ".nc":
        return load_brainio(path, **kwargs)
    if path.is_file() and path.suffix in (".h5", ".hdf5"):
        return load_dicarlo_hdf5(path, **kwargs)
    if path.exists():
        raise UnknownDatasetError(f"{path}: not a dataset folder (with dataset.toml), .nc or .hdf5 file")
    raise _unknown(str(name_or_path))
