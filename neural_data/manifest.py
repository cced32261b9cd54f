"""`dataset.toml`, the manifest of a folder dataset, as a typed model.

Every key is checked for its type when the file is read; an unknown key (often a typo) is an error, and
each message names the file, the key, what was expected and what was found.
"""
from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DatasetValidationError
from .schema import NO_STRATIFICATION
from .validate import DEFAULT_MIN_PER_CATEGORY

MANIFEST_FILE = "dataset.toml"

FILE_NAME = 'a file name inside the dataset folder, a string like "{example}"'


def _file_name(example: str) -> str:
    return FILE_NAME.format(example=example)


class DatasetManifest(BaseModel):
    """The keys of `dataset.toml`. Only `name` is required; the rest have the defaults shown.

    Each field's description is the plain-words "expected" of its error message.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1, description='the dataset\'s name, a string like "MyLab2024"')]
    citation: Annotated[str, Field(description='a string like "Author et al. (2024) Journal"')] = ""
    description: Annotated[str, Field(description="a string")] = ""
    stimulus_id_column: Annotated[str, Field(
        min_length=1, description='the name of the stimulus table\'s id column, a string like "image_id"'
    )] = "stimulus_id"
    stratify_by: Annotated[str, Field(
        min_length=1, description='the stimulus table column to stratify train/test splits by, a string like '
                                  '"category_name", or "none" for plain random splits')] = "category_name"
    regions: Annotated[list[str], Field(description='a list of strings like ["V4", "IT"]')] = []
    time_window_ms: Annotated[list[int | float] | None, Field(
        min_length=2, max_length=2,
        description="[start, end] in ms, two numbers with start < end, like [70, 170]")] = None
    responses: Annotated[str | None, Field(min_length=1, description=_file_name("responses.npy"))] = None
    images: Annotated[str | None, Field(min_length=1, description=_file_name("images.zip"))] = None
    stimuli: Annotated[str, Field(min_length=1, description=_file_name("stimuli.csv"))] = "stimuli.csv"
    neuroids: Annotated[str, Field(min_length=1, description=_file_name("neuroids.csv"))] = "neuroids.csv"
    min_per_category: Annotated[int, Field(
        ge=2, description="a whole number of images of at least 2, like 4")] = DEFAULT_MIN_PER_CATEGORY

    @field_validator("time_window_ms")
    @classmethod
    def _start_before_end(cls, window):
        if window is not None and not window[0] < window[1]:
            raise ValueError("start must be before end")
        return window

    @property
    def stratify_column(self) -> str | None:
        """The column splits are stratified by, or None for `stratify_by = "none"`."""
        return None if self.stratify_by == NO_STRATIFICATION else self.stratify_by

    @property
    def time_window(self) -> tuple[float, float] | None:
        return tuple(self.time_window_ms) if self.time_window_ms is not None else None

    def validation_options(self) -> dict:
        """Keyword arguments of `neural_data.validate` / `find_problems` that this manifest sets."""
        return {"stratify_by": self.stratify_column, "regions": list(self.regions) or None,
                "min_per_category": self.min_per_category}


def read_manifest(folder: str | Path) -> DatasetManifest:
    """The `dataset.toml` of a folder dataset; DatasetValidationError lists every bad key at once."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a folder dataset needs a {MANIFEST_FILE}; "
                                f"see neural_data/README.md, 'Adding a dataset')")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise DatasetValidationError(str(path), [f"not valid TOML: {error}"]) from None
    try:
        return DatasetManifest(**raw)
    except ValidationError as error:
        raise DatasetValidationError(str(path), manifest_problems(error, raw)) from None


def manifest_problems(error: ValidationError, raw: dict) -> list[str]:
    """One sentence per bad key of a manifest: the key, what it must be, and the value found."""
    problems: dict[str, str] = {}
    for detail in error.errors():
        key = str(detail["loc"][0])
        if key in problems:
            continue  # a key with several errors (e.g. each member of a list) gets one sentence
        if detail["type"] == "extra_forbidden":
            problems[key] = _unknown_key(key)
        elif detail["type"] == "missing":
            problems[key] = f"missing key '{key}': {_expected(key)}"
        else:
            problems[key] = f"key '{key}' must be {_expected(key)}; got {_as_toml(raw[key])}"
    return list(problems.values())


def _expected(key: str) -> str:
    return DatasetManifest.model_fields[key].description or "a value"


def _unknown_key(key: str) -> str:
    valid = sorted(DatasetManifest.model_fields)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; valid keys: {', '.join(valid)}"


def _as_toml(value) -> str:
    """A value as it looks in TOML (strings in double quotes, lists in brackets), for messages."""
    return json.dumps(value, default=str)
