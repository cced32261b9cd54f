"""Stimulus sets: a metadata table keyed by `stimulus_id` plus lazy access to each image.

Images can live in a folder, a zip archive or an (N, H, W[, C]) array inside an HDF5 file; the
`ImageSource` classes hide which. Nothing is read until an image is asked for.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError, UnreadableImageError, cut_list

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")

# Columns that, when present in a stimulus table, name the image file of each row (first match wins).
FILENAME_COLUMNS = (
    "image_file_name",
    "filename",
    "image_current_relative_file_path",
    "image_path_within_store",
    "stimulus_path_within_store",
)


class ImageSource:
    """Where images live. Subclasses map a stimulus to raw encoded bytes (PNG, JPEG, ...)."""

    description = "images"

    def has(self, key: str) -> bool:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def where(self, key: str) -> str:
        """The file (or zip member, or array row) that `read(key)` reads, for messages."""
        return f"{self.description}, {key}"


class _NamedFilesSource(ImageSource):
    """Shared logic of folders and zips: find a file by its basename or by `<stimulus_id>.<suffix>`."""

    def __init__(self, names: Iterable[str]):
        self._by_basename: dict[str, str] = {}
        self._by_stem: dict[str, str] = {}
        for name in sorted(names):
            base = os.path.basename(name)
            stem, suffix = os.path.splitext(base)
            if suffix.lower() not in IMAGE_SUFFIXES or base.startswith("."):
                continue
            self._by_basename.setdefault(base, name)
            self._by_stem.setdefault(stem, name)

    def locate(self, key: str) -> str | None:
        base = os.path.basename(key)
        return self._by_basename.get(base) or self._by_stem.get(base) or self._by_stem.get(os.path.splitext(base)[0])

    def has(self, key: str) -> bool:
        return self.locate(key) is not None


class FolderImages(_NamedFilesSource):
    """Images as files in a folder (searched recursively)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: image folder not found")
        self.description = str(self.folder)
        super().__init__(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())

    def read(self, key: str) -> bytes:
        name = self.locate(key)
        if name is None:
            raise FileNotFoundError(f"{self.folder}: no image file for stimulus '{key}'")
        return (self.folder / name).read_bytes()

    def where(self, key: str) -> str:
        return str(self.folder / (self.locate(key) or key))


class ZipImages(_NamedFilesSource):
    """Images inside a zip archive (any folder depth inside the archive)."""

    def __init__(self, archive: str | os.PathLike):
        self.archive = Path(archive)
        if not self.archive.is_file():
            raise FileNotFoundError(f"{self.archive}: image zip not found")
        self.description = str(self.archive)
        with zipfile.ZipFile(self.archive) as handle:
            super().__init__(handle.namelist())
        self._handle: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def _zip(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited through fork is not safe to share.
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = zipfile.ZipFile(self.archive), os.getpid()
        return self._handle

    def read(self, key: str) -> bytes:
        name = self.locate(key)
        if name is None:
            raise FileNotFoundError(f"{self.archive}: no image in the zip for stimulus '{key}'")
        return self._zip().read(name)

    def where(self, key: str) -> str:
        return f"{self.archive}, member {self.locate(key) or key}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state


class ArrayImages(ImageSource):
    """Images as rows of an (N, H, W) or (N, H, W, C) array, in memory or in an HDF5 dataset.

    `keys` gives the stimulus id of each row. Float arrays in [0, 1] are scaled to 0-255; other
    float ranges are min-max scaled per image. Images are served as PNG bytes.
    """

    def __init__(self, keys: Sequence[str], array: np.ndarray | None = None,
                 hdf5_path: str | os.PathLike | None = None, dataset: str = "images"):
        if (array is None) == (hdf5_path is None):
            raise ValueError("ArrayImages needs exactly one of `array` or `hdf5_path`")
        self._row = {str(key): index for index, key in enumerate(keys)}
        self._array = array
        self.hdf5_path = Path(hdf5_path) if hdf5_path is not None else None
        self.dataset = dataset
        self.description = f"{self.hdf5_path}:{dataset}" if self.hdf5_path else "in-memory array"

    def has(self, key: str) -> bool:
        return key in self._row

    def pixels(self, key: str) -> np.ndarray:
        row = self._row[key]
        if self._array is not None:
            return to_uint8(np.asarray(self._array[row]))
        import h5py

        with h5py.File(self.hdf5_path, "r") as handle:
            return to_uint8(np.asarray(handle[self.dataset][row]))

    def read(self, key: str) -> bytes:
        if key not in self._row:
            raise FileNotFoundError(f"{self.description}: no image row for stimulus '{key}'")
        buffer = io.BytesIO()
        Image.fromarray(self.pixels(key)).save(buffer, format="PNG")
        return buffer.getvalue()

    def where(self, key: str) -> str:
        return f"{self.description}, row {self._row.get(key, '?')}"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to uint8: floats in [0, 1] scale by 255, other floats are min-max scaled."""
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    low, high = float(np.nanmin(image)), float(np.nanmax(image))
    if low >= 0.0 and high <= 1.0:
        scaled = image * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = image
    else:
        scaled = (image - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


# What PIL raises for bytes that are not a (complete, sane) image.
UNREADABLE_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
                           Image.DecompressionBombError)


def _decode_failure(error: Exception, data: bytes) -> str:
    """Why PIL could not decode `data`, in words (PIL's own message names an in-memory buffer)."""
    if isinstance(error, UnidentifiedImageError):
        return f"not a recognised image format ({len(data)} bytes)"
    return str(error) or type(error).__name__


def image_source(location: str | os.PathLike) -> ImageSource:
    """An ImageSource for a folder or a zip archive."""
    path = Path(location)
    if path.is_dir():
        return FolderImages(path)
    if path.suffix.lower() == ".zip":
        return ZipImages(path)
    raise FileNotFoundError(f"{path}: not an image folder or a .zip of images")


class StimulusSet:
    """A table of stimuli (column `stimulus_id` plus metadata) with lazy access to the images.

    `sources` are tried in order; the file of a stimulus is found by its filename column (see
    `FILENAME_COLUMNS`) when the table has one, else by `<stimulus_id>.<image suffix>`.
    """

    def __init__(self, table: pd.DataFrame, sources: ImageSource | Sequence[ImageSource] = (),
                 source: str = ""):
        if "stimulus_id" not in table.columns:
            raise DatasetError(f"{source or 'stimulus table'}: no 'stimulus_id' column "
                               f"({cut_list(table.columns, 'column', limit=20)})")
        table = table.reset_index(drop=True).copy()
        table["stimulus_id"] = table["stimulus_id"].astype(str)
        self.table = table
        self.sources = [sources] if isinstance(sources, ImageSource) else list(sources)
        self.source = source
        self._row = {sid: index for index, sid in enumerate(table["stimulus_id"])}
        self._filename_column = next((c for c in FILENAME_COLUMNS if c in table.columns), None)

    @property
    def stimulus_ids(self) -> list[str]:
        return list(self.table["stimulus_id"])

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        where = ", ".join(s.description for s in self.sources) or "no images"
        return f"StimulusSet({len(self)} stimuli, images from {where})"

    def _keys(self, stimulus_id: str) -> list[str]:
        keys = []
        if self._filename_column is not None and stimulus_id in self._row:
            value = self.table.at[self._row[stimulus_id], self._filename_column]
            if isinstance(value, str) and value:
                keys.append(value)
        keys.append(stimulus_id)
        return keys

    def has_image(self, stimulus_id: str) -> bool:
        return any(source.has(key) for key in self._keys(stimulus_id) for source in self.sources)

    def missing_images(self) -> list[str]:
        """Stimulus ids of the table whose image cannot be found in any source."""
        return [sid for sid in self.stimulus_ids if not self.has_image(sid)]

    def _source_of(self, stimulus_id: str) -> tuple[ImageSource, str]:
        """The first source holding the stimulus's image, and the key it is found under there."""
        for key in self._keys(stimulus_id):
            for source in self.sources:
                if source.has(key):
                    return source, key
        where = ", ".join(s.description for s in self.sources) or "no image source"
        raise FileNotFoundError(f"{where}: no image for stimulus '{stimulus_id}'")

    def image_bytes(self, stimulus_id: str) -> bytes:
        """The encoded image file (PNG, JPEG, ...) of one stimulus."""
        source, key = self._source_of(stimulus_id)
        return source.read(key)

    def image_location(self, stimulus_id: str) -> str:
        """The file, zip member or array row holding the image of one stimulus, for messages."""
        source, key = self._source_of(stimulus_id)
        return source.where(key)

    def open(self, stimulus_id: str) -> Image.Image:
        """The image of one stimulus as a PIL image (mode as stored: 'L', 'RGB', ...).

        A file that is not a decodable image raises UnreadableImageError (a DatasetError) naming the
        stimulus and the file.
        """
        data = self.image_bytes(stimulus_id)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except UNREADABLE_IMAGE_ERRORS as error:
            raise UnreadableImageError.of(stimulus_id, self.image_location(stimulus_id),
                                          _decode_failure(error, data)) from None
        return image

    def unreadable_images(self) -> dict[str, str]:
        """{stimulus_id: "file: why"} of every image that exists but cannot be decoded.

        Decodes the images one at a time (none are kept); stimuli without an image are left to
        `missing_images`.
        """
        unreadable = {}
        for stimulus_id in self.stimulus_ids:
            if not self.has_image(stimulus_id):
                continue
            try:
                self.open(stimulus_id).close()
            except UnreadableImageError as error:
                unreadable[stimulus_id] = f"{error.location}: {error.reason}"
        return unreadable

    def subset(self, stimulus_ids: Sequence[str]) -> "StimulusSet":
        """A new set with these stimuli, in this order, sharing the image sources."""
        missing = [sid for sid in stimulus_ids if sid not in self._row]
        if missing:
            raise DatasetError(f"{self.source or 'stimulus set'}: stimuli not in the set: "
                               f"{cut_list(missing, 'stimulus id')}")
        rows = [self._row[sid] for sid in stimulus_ids]
        return StimulusSet(self.table.iloc[rows], self.sources, source=self.source)

    def table_hash(self) -> str:
        """sha256 of the table's CSV text (ids and metadata, not the pixels)."""
        text = self.table.to_csv(index=False, lineterminator="\n")
        return hashlib.sha256(text.encode()).hexdigest()

    def content_hash(self) -> str:
        """sha256 over every stimulus id and its image bytes, in table order (reads every image)."""
        digest = hashlib.sha256()
        for sid in self.stimulus_ids:
            digest.update(sid.encode() + b"\0")
            digest.update(hashlib.sha256(self.image_bytes(sid)).digest())
        return digest.hexdigest()
