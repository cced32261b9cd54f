"""Brain datasets: one schema, loaders for real formats, a registry, a synthetic generator.

    import neural_data
    dataset = neural_data.load("synthetic")            # or "MajajHong2015", or a folder / .nc / .hdf5 path
    dataset.assembly                                     # trial-level DataArray (presentation, neuroid)
    dataset.averaged()                                   # (stimulus, neuroid), ordered like dataset.stimuli
    dataset.stimuli.open(dataset.stimuli.stimulus_ids[0])  # PIL image
"""
from . import datasets as _builtin_datasets  # noqa: F401  (registers the built-in names)
from .errors import DataNotAvailableError, DatasetError, DatasetValidationError, UnknownDatasetError
from .registry import describe, list_datasets, load, register
from .schema import NeuralDataset, average_repetitions, make_assembly
from .stimuli import ArrayImages, FolderImages, StimulusSet, ZipImages
from .validate import find_problems, validate

__all__ = [
    "ArrayImages", "DataNotAvailableError", "DatasetError", "DatasetValidationError", "FolderImages",
    "NeuralDataset", "StimulusSet", "UnknownDatasetError", "ZipImages", "average_repetitions", "describe",
    "find_problems", "list_datasets", "load", "make_assembly", "register", "validate",
]
