"""Atomic writes: the temporary file is fsynced before the rename and the folder after it
(unless skipped), failures leave the old file and no temporaries, folders swap whole."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from membrane_py.atomic import atomic_dir, atomic_path, fsync_dir, write_bytes_atomic


@pytest.fixture
def syscalls(monkeypatch) -> list[tuple[str, str]]:
    """Records ("fsync", path) and ("replace", destination) in call order (Linux: the
    synced path is read from /proc)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads fsynced paths from /proc/self/fd")
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_file_is_synced_before_the_rename_and_the_folder_after(tmp_path, syscalls):
    path = tmp_path / "a.bin"
    write_bytes_atomic(path, b"data")
    assert path.read_bytes() == b"data"
    (op1, synced), (op2, dst), (op3, folder) = syscalls
    assert (op1, op2, op3) == ("fsync", "replace", "fsync")
    assert Path(synced).name.startswith(".a.bin.") and synced.endswith(".tmp")
    assert dst == str(path) and folder == str(tmp_path)


def test_sync_dir_false_syncs_only_the_file(tmp_path, syscalls):
    write_bytes_atomic(tmp_path / "t.png", b"png", sync_dir=False)
    assert [op for op, _ in syscalls] == ["fsync", "replace"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = write_bytes_atomic(tmp_path / "a.txt", b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_atomic_dir_swaps_a_whole_folder(tmp_path, syscalls):
    path = tmp_path / "out.zarr"
    with atomic_dir(path) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "0").write_bytes(b"new")
    assert (path / "sub" / "0").read_bytes() == b"new"
    synced = [p for op, p in syscalls if op == "fsync"]
    assert any(p.endswith("/sub/0") for p in synced) and synced[-1] == str(tmp_path)
    with pytest.raises(RuntimeError), atomic_dir(path) as tmp:
        (tmp / "x").write_bytes(b"half")
        raise RuntimeError("killed")
    with atomic_dir(path) as tmp:
        (tmp / "y").write_bytes(b"newer")
    assert sorted(p.name for p in path.iterdir()) == ["y"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]  # no temporaries, no old


def test_folder_sync_is_skipped_where_folders_cannot_be_opened(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "name", "nt")
    fsync_dir(tmp_path / "never opened")  # on POSIX this path would raise
