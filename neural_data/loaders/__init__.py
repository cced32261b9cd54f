"""Readers of the on-disk formats; each returns a `NeuralDataset` in the common schema."""
from .brainio import assembly_from_brainio, load_brainio, read_brainio_array
from .dicarlo_hdf5 import load_dicarlo_hdf5
from .folder import assembly_from_array, load_folder

__all__ = ["assembly_from_array", "assembly_from_brainio", "load_brainio", "load_dicarlo_hdf5", "load_folder",
           "read_brainio_array"]
