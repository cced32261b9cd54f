"""Errors that name the file, the field and what was expected.

Each one subclasses a builtin the CLI already treats as a user mistake (ValueError, LookupError,
FileNotFoundError), so callers can catch either the builtin or the specific class.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is malformed: a field is missing, has the wrong shape, or holds bad values."""


class DatasetValidationError(DatasetError):
    """One or more schema checks failed; `.problems` lists each one as a sentence."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class UnknownDatasetError(LookupError):
    """A dataset name is not registered and is not a path to a dataset."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class DataNotAvailableError(FileNotFoundError):
    """A registered dataset needs files that are not on this machine (say where to point us)."""
