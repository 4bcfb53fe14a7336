"""Atomic file writes: a temporary sibling file, then a rename, so a reader (or a rerun
after a crash) never sees half a file. Temporaries are named ``.<name>.<random>.tmp``.

Durability: the temporary file is fsynced before the rename, so a power cut cannot leave a
renamed but empty or partial file (journaling filesystems may persist the rename before the
data). By default the folder is fsynced after the rename too, so the new file survives a
power cut; ``sync_dir=False`` skips that for hot paths where losing the newest files only
means redoing them (prediction tiles: a rerun recomputes missing tiles). Measured on ext4
for 200 PNG tiles of ~18 KB: no fsync 1.0 ms/tile, file fsync 4.9 ms/tile, file and folder
fsync 9.3 ms/tile. Folder fsync is POSIX only; elsewhere (Windows) it is skipped.
Folders (e.g. zarr stores) work the same way through :func:`atomic_dir`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: errors of filesystems that cannot fsync a folder (some network and FUSE mounts)
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to disk (opened for writing: Windows refuses fsync otherwise)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Make the renames and new entries in ``folder`` durable; a no-op where folders cannot
    be opened (Windows) or the filesystem does not support it."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, sync_dir: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is fsynced and
    replaces ``path`` (then the folder is fsynced, with ``sync_dir``), otherwise it is
    deleted. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp's 0600 would hide outputs from other users
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; when the block succeeds every file in it
    is fsynced and it replaces ``path`` (an old folder there is moved aside, then removed),
    otherwise it is deleted. For outputs that are folders (zarr arrays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide outputs from other users
    try:
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(folder) / name)
            fsync_dir(folder)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | Path, data: bytes, sync_dir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path` for ``sync_dir``)."""
    with atomic_path(path, sync_dir) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))
