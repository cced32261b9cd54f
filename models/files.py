"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The data goes to a uniquely named temporary file in the target's folder (so that concurrent writers never
share a temporary file and `os.replace` stays on one file system), is flushed to disk, and is then moved
over the target in one step. On any failure the temporary file is removed and the target is untouched.

    write_atomic(path, b"...")                  # bytes or str (UTF-8)
    with atomic_path("scores.nc") as tmp:       # for writers that want a file name
        dataset.to_netcdf(tmp)
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_atomic"]


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path` atomically; returns `path` as a Path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_atomic({path}): data must be bytes or str, got {type(data).__name__}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside `path` (same suffix); move it onto `path` when the block succeeds.

    The suffix is kept because some writers choose the format from it (`np.save` adds `.npy` otherwise,
    `to_netcdf` reads `.nc`). The temporary file exists (empty) when the block starts; a writer may replace it.
    """
    target = Path(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}",
                                        dir=target.parent)
    os.close(descriptor)
    tmp = Path(name)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{target}: the writer removed its temporary file {tmp} instead of writing it")
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the mode open() would have given
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows opening a folder (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current
