"""Errors shared across models/ that users meet at the command line."""
from __future__ import annotations

__all__ = ["UnknownNameError"]


class UnknownNameError(KeyError):
    """An unknown rule, preset, architecture or dataset name; the message lists the valid ones.

    A KeyError (callers catch lookups as such) whose text prints without the quotes KeyError adds around a key.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
