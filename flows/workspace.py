"""The work folder and content keys shared by the flows and the CLI.

Everything bulky lives in the work folder (``$NEURALIGN_WORK``, default ``./work``): trained checkpoints,
generated datasets, activation stores and Gram matrices, run reports.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WORK_ENV = "NEURALIGN_WORK"


def work_dir(path: str | os.PathLike | None = None) -> Path:
    """The work folder: `path`, else $NEURALIGN_WORK, else ./work (created, absolute)."""
    folder = Path(path or os.environ.get(WORK_ENV) or "work").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def digest(payload: Any) -> str:
    """sha256 of a JSON-able value (sorted keys): the content key of configs and parameter sets."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def counted(items, noun: str, first: int = 5) -> str:
    """'640 stimulus ids, first 5: a, b, c, d, e' (or all of them when there are few)."""
    items = [str(item) for item in items]
    plural = noun + ("s" if len(items) != 1 else "")
    if len(items) <= first:
        return f"{len(items)} {plural} ({', '.join(items)})"
    return f"{len(items)} {plural}, first {first}: {', '.join(items[:first])}"


def error_text(error: BaseException) -> str:
    """The error's text, without the quotes KeyError (and LookupError subclasses of it) put around it."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's text (or of a message): what a status line or a table cell shows."""
    text = error if isinstance(error, str) else error_text(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines:
        return lines[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""
