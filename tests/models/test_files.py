"""Atomic writes: content, unique temporary names under concurrent writers, nothing left behind on failure."""
import os
import threading

import numpy as np
import pytest

from models.files import atomic_path, write_atomic


def leftovers(folder, target_name):
    return sorted(path.name for path in folder.iterdir() if path.name != target_name)


def test_write_atomic_writes_bytes_and_text(tmp_path):
    target = tmp_path / "meta.json"
    assert write_atomic(target, '{"a": "\u00e9"}') == target
    assert target.read_bytes() == '{"a": "\u00e9"}'.encode("utf-8")
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path, "meta.json") == []
    with pytest.raises(TypeError, match="meta.json.*bytes or str"):
        write_atomic(target, {"a": 1})
    assert target.read_bytes() == b"\x00\x01"


def test_new_files_get_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    target = tmp_path / "features.npy"
    values = np.arange(6.0).reshape(2, 3)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp != target
        np.save(tmp, values)  # np.save would append ".npy" to a name without it, and the move would miss it
        assert not target.exists()  # nothing visible before the block succeeds
    np.testing.assert_array_equal(np.load(target), values)
    assert leftovers(tmp_path, "features.npy") == []


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "scores.nc"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert leftovers(tmp_path, "scores.nc") == []


def test_a_writer_that_removes_its_temporary_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="out.bin"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.unlink()
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "shared.txt"
    writers = 8
    inside = threading.Barrier(writers)
    names, errors = [], []

    def write(index):
        try:
            with atomic_path(target) as tmp:
                names.append(tmp.name)
                inside.wait(timeout=30)  # every writer holds its temporary file at the same time
                tmp.write_text(f"writer {index} " * 1000)
        except Exception as error:  # surfaced by the assertion below, not swallowed
            errors.append(error)

    threads = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(names)) == writers
    text = target.read_text()
    assert text in {f"writer {index} " * 1000 for index in range(writers)}  # one writer's whole content
    assert leftovers(tmp_path, "shared.txt") == []
