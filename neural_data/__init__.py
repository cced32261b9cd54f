"""Brain datasets: one schema, loaders for real formats, a registry, a synthetic generator.

    import neural_data
    dataset = neural_data.load("synthetic")            # or "MajajHong2015", or a folder / .nc / .hdf5 path
    dataset.assembly                                     # trial-level DataArray (presentation, neuroid)
    dataset.averaged()                                   # (stimulus, neuroid), ordered like dataset.stimuli
    dataset.stimuli.open(dataset.stimuli.stimulus_ids[0])  # PIL image
    neural_data.check_folder("path/to/folder")           # problems and warnings of a folder dataset
"""
from . import datasets as _builtin_datasets  # noqa: F401  (registers the built-in names)
from .check import FolderCheck, check_folder
from .errors import (DataNotAvailableError, DatasetError, DatasetValidationError, UnknownDatasetError,
                     UnknownRegionError, UnreadableImageError)
from .manifest import DatasetManifest, read_manifest
from .registry import describe, list_datasets, load, register
from .schema import NO_STRATIFICATION, NeuralDataset, average_repetitions, make_assembly
from .stimuli import ArrayImages, FolderImages, StimulusSet, ZipImages
from .validate import find_problems, site_problems, validate

__all__ = [
    "NO_STRATIFICATION", "ArrayImages", "DataNotAvailableError", "DatasetError", "DatasetManifest",
    "DatasetValidationError", "FolderCheck", "FolderImages", "NeuralDataset", "StimulusSet", "UnknownDatasetError",
    "UnknownRegionError", "UnreadableImageError", "ZipImages", "average_repetitions", "check_folder", "describe",
    "find_problems", "list_datasets", "load", "make_assembly", "read_manifest", "register", "site_problems",
    "validate",
]
