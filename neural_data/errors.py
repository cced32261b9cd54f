"""Errors that name the file, the field and what was expected, and the helper that keeps their id lists short.

Each error subclasses a builtin the CLI already treats as a user mistake (ValueError, LookupError,
FileNotFoundError), so callers can catch either the builtin or the specific class.
"""
from __future__ import annotations

from collections.abc import Iterable

LISTED_IDS = 5  # how many ids a message shows before it says how many there are in all


def cut_list(items: Iterable, singular: str, plural: str | None = None, limit: int = LISTED_IDS) -> str:
    """A count and the first few items: "640 stimulus ids, first 5: a, b, c, d, e" or "2 site ids: a, b"."""
    items = [str(item) for item in items]
    plural = plural or f"{singular}s"
    noun = singular if len(items) == 1 else plural
    if not items:
        return f"no {plural}"
    if len(items) <= limit:
        return f"{len(items)} {noun}: {', '.join(items)}"
    return f"{len(items)} {noun}, first {limit}: {', '.join(items[:limit])}"


class DatasetError(ValueError):
    """A dataset file is malformed: a field is missing, has the wrong shape, or holds bad values."""


class DatasetValidationError(DatasetError):
    """One or more schema checks failed; `.problems` lists each one as a sentence."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(f"{source}: {self.problems[0]}")
            return
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problems:\n{lines}")

    def __reduce__(self):  # rebuilt from (source, problems) when it crosses to another process
        return type(self), (self.source, self.problems)


class UnreadableImageError(DatasetError):
    """An image file exists but cannot be decoded; names the stimulus, the file (or zip member) and why.

    Built with `UnreadableImageError.of(stimulus_id, location, reason)`; the constructor takes the
    message first, as worker pools re-raise an exception from its message alone.
    """

    def __init__(self, message: str, stimulus_id: str = "", location: str = "", reason: str = ""):
        super().__init__(message)
        self.stimulus_id, self.location, self.reason = stimulus_id, location, reason

    @classmethod
    def of(cls, stimulus_id: str, location: str, reason: str) -> UnreadableImageError:
        message = f"{location}: the image of stimulus '{stimulus_id}' cannot be read: {reason}"
        return cls(message, stimulus_id, location, reason)


class UnknownDatasetError(LookupError):
    """A dataset name is not registered and is not a path to a dataset."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class UnknownRegionError(KeyError):
    """A region name a dataset has no sites in."""

    def __str__(self) -> str:  # KeyError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class DataNotAvailableError(FileNotFoundError):
    """A registered dataset needs files that are not on this machine (say where to point us)."""
