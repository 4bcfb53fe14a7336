"""The state directory: everything a client changes survives a restart with the same one.

Files: ``state.json`` (layer list, selections, view), ``seg_<uid>.npy`` (a memory-mapped
uint16 volume per segmentation layer), ``segments_<uid>.json`` (a snapshot of its segment
table) with ``segments_<uid>.journal``, and ``anno_<uid>.json`` (annotation objects and
skeleton nodes). JSON files are written atomically (temporary file, then ``os.replace``).

Segment tables change one or a few rows per command (ADDSEGMENT, SETSEGMENTNAME, painting),
and rewriting the whole table each time made a call cost grow with the table. Instead, each
command appends one JSON line with the table length and the changed rows (words and name) to
the journal before its reply is sent; restoring replays the lines over the snapshot. Lines
hold absolute row contents, so replaying one twice is harmless, and a line cut short by a
crash is the last one and is skipped. The journal is folded into the snapshot on SAVELAYER,
on shutdown, after a restore, and when it outgrows :data:`JOURNAL_MIN_COMPACT` and twice
the snapshot, so its size (and replay time) stays bounded.

Only one server may use a state directory at a time (two would overwrite each other's
files): :class:`StateLock` holds an operating-system lock on ``server.lock`` for the life
of the server. The operating system drops the lock when the process ends, however it ends
(SIGKILL included), so a crashed server never leaves a stale lock behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from membrane_py.atomic import write_text_atomic
from membrane_py.volumes.base import VolumeSource
from mock_vast_server.layers import (
    KIND_SLOTS,
    PROP_DEFAULTS,
    AnnoLayer,
    Layer,
    LayerKind,
    Selection,
)
from mock_vast_server.tables import SEG_COLS, Table

log = logging.getLogger("mock_vast_server")

STATE_VERSION = 1
LOCK_NAME = "server.lock"
#: The locked byte lies past the pid text: Windows locks are mandatory, and the second
#: server must still be able to read whom it is waiting for.
LOCK_OFFSET = 1 << 16
JOURNAL_MIN_COMPACT = 4 << 20  # bytes; below this a journal is never compacted early


def default_state_dir(volume: str, labels: str | None = None) -> Path:
    """``$XDG_DATA_HOME/membrane-py/mock_vast/<name>-<hash>`` for a volume (and labels) spec."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")

    def key(spec: str | None) -> str:
        if spec is None:
            return ""
        p = Path(spec)
        return str(p.resolve()) if p.exists() else spec

    digest = hashlib.sha1(f"{key(volume)}|{key(labels)}".encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(volume.rstrip("/\\")).name or volume).strip("_")
    return base / "membrane-py" / "mock_vast" / f"{name or 'volume'}-{digest}"


def write_json_atomic(path: Path, doc: object) -> None:
    write_text_atomic(path, json.dumps(doc))


class StateDirBusy(OSError):
    """Another running server holds the state directory."""


class StateLock:
    """An exclusive lock on a state directory (``flock`` on POSIX, ``msvcrt`` on Windows).

    The lock file holds the owner's pid, so a refused server can say which one is running.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._file = self.path.open("a+", encoding="ascii")
        try:
            _lock(self._file)
        except OSError:
            self._file.seek(0)
            owner = self._file.read(64).strip() or "unknown"
            self._file.close()
            raise StateDirBusy(f"state dir {directory} is in use by another mock_vast_server "
                               f"(pid {owner}); stop that server or pass another --state "
                               f"directory") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    @property
    def held(self) -> bool:
        return not self._file.closed

    def release(self) -> None:
        if self.held:
            _unlock(self._file)
            self._file.close()


def _lock(f) -> None:
    """An exclusive, non-blocking lock on ``f`` (``OSError`` when another process holds it).
    The platform's module is imported here so that importing this file works everywhere."""
    if sys.platform == "win32":
        import msvcrt

        f.seek(LOCK_OFFSET)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(f) -> None:
    if sys.platform == "win32":
        import msvcrt

        f.seek(LOCK_OFFSET)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass
class Meta:
    """What ``state.json`` holds besides the volume shape: layers, selections, view."""

    layers: list[Layer]
    ui: Selection
    api: Selection
    api_enabled: int
    view: list[int]
    zoom: int


class StateDir:
    """Reads and writes one state directory, which it locks until :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = StateLock(self.path)

    @property
    def closed(self) -> bool:
        return not self.lock.held

    def close(self) -> None:
        """Let another server use the directory."""
        self.lock.release()

    @property
    def meta_file(self) -> Path:
        return self.path / "state.json"

    def exists(self) -> bool:
        """Whether a server has already saved state here."""
        return self.meta_file.exists()

    def _file(self, kind: str, layer: Layer, suffix: str) -> Path:
        return self.path / f"{kind}_{layer.uid}.{suffix}"

    # -- writing --

    def save_meta(self, shape: tuple[int, int, int], meta: Meta) -> None:
        def idx(layer: Layer | None) -> int:
            return -1 if layer is None else meta.layers.index(layer)

        doc = {
            "version": STATE_VERSION,
            "shape": list(shape),
            "layers": [{"uid": la.uid, "kind": int(la.kind), "name": la.name, "source": la.source,
                        "props": la.props} for la in meta.layers],
            "ui": [idx(la) for la in meta.ui.slots()],
            "api": [idx(la) for la in meta.api.slots()],
            "api_enabled": meta.api_enabled,
            "view": meta.view,
            "zoom": meta.zoom,
        }
        write_json_atomic(self.meta_file, doc)

    def create_seg(self, layer: Layer, shape: tuple[int, int, int]) -> np.ndarray:
        """A new zeroed uint16 label volume for ``layer``, memory-mapped from its file."""
        return open_memmap(self._file("seg", layer, "npy"), mode="w+", dtype=np.uint16,
                           shape=shape)

    def save_table(self, layer: Layer) -> None:
        """Snapshot ``layer``'s whole segment table and drop its journal."""
        layer.segments.take_touched()
        write_json_atomic(self._file("segments", layer, "json"), layer.segments.to_json())
        self._file("segments", layer, "journal").unlink(missing_ok=True)

    def journal_table(self, layer: Layer) -> None:
        """Append the segment rows changed since the last save to the layer's journal."""
        table = layer.segments
        ids = table.take_touched()
        if not ids:
            return
        line = json.dumps({"n": len(table), "rows": [[i, table.names[i], table.rec[i].tolist()]
                                                     for i in ids]}) + "\n"
        journal = self._file("segments", layer, "journal")
        with journal.open("a", encoding="utf-8") as f:
            f.write(line)
            size = f.tell()
        snapshot = self._file("segments", layer, "json").stat().st_size
        if size > max(JOURNAL_MIN_COMPACT, 2 * snapshot):
            self.save_table(layer)

    def _read_table(self, layer: Layer) -> Table:
        """The snapshot of ``layer``'s segment table with its journal replayed."""
        table = Table.from_json(json.loads(self._file("segments", layer, "json").read_text()),
                                SEG_COLS)
        journal = self._file("segments", layer, "journal")
        if not journal.exists():
            return table
        lines = journal.read_text(encoding="utf-8").splitlines()
        for k, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if k == len(lines) - 1:  # cut short by a crash mid-write: never acknowledged
                    log.warning("%s: skipping a truncated last line", journal)
                    break
                raise ValueError(f"{journal}: line {k + 1} is corrupt") from None
            table.set_rows(entry["n"], {i: (words, name) for i, name, words in entry["rows"]})
        log.info("replayed %d segment-table changes from %s", len(lines), journal)
        return table

    def save_anno(self, layer: Layer) -> None:
        write_json_atomic(self._file("anno", layer, "json"), layer.anno.to_json())

    def remove(self, layer: Layer) -> None:
        """Delete every file of a removed layer."""
        for f in self.path.glob(f"*_{layer.uid}.*"):
            f.unlink(missing_ok=True)

    # -- restoring --

    def restore(self, em: VolumeSource, open_image: Callable[[str], VolumeSource]) -> Meta:
        """Layers and selections saved here over ``em``; ValueError for another volume's state.

        Loaded image layers are reopened with ``open_image`` (a layer it refuses is dropped).
        """
        doc = json.loads(self.meta_file.read_text())
        if tuple(doc["shape"]) != tuple(em.shape):
            raise ValueError(
                f"state dir {self.path} belongs to a volume of shape {tuple(doc['shape'])}, "
                f"not {em.shape} ({em.name}); pass another --state directory")
        layers = []
        for d in doc["layers"]:
            layer = Layer(LayerKind(d["kind"]), d["name"], uid=d["uid"], source=d["source"],
                          props={**PROP_DEFAULTS, **d["props"]})
            if layer.kind is LayerKind.IMAGE:
                if layer.source is None:
                    layer.volume = em
                else:
                    try:
                        layer.volume = open_image(layer.source)
                    except Exception as exc:  # noqa: BLE001 - keep serving the rest
                        log.warning("cannot reopen image layer %s (%s): %s; dropping it",
                                    layer.name, layer.source, exc)
                        continue
            elif layer.kind is LayerKind.SEGMENTATION:
                layer.seg = np.load(self._file("seg", layer, "npy"), mmap_mode="r+")
                layer.segments = self._read_table(layer)
                self.save_table(layer)
            elif layer.kind is LayerKind.ANNOTATION:
                annodoc = json.loads(self._file("anno", layer, "json").read_text())
                layer.anno = AnnoLayer.from_json(annodoc)
            layers.append(layer)
        by_uid = {la.uid: la for la in layers}
        uids = [d["uid"] for d in doc["layers"]]
        meta = Meta(layers, Selection(), Selection(), int(doc["api_enabled"]), list(doc["view"]),
                    int(doc["zoom"]))
        for sel, key in ((meta.ui, "ui"), (meta.api, "api")):
            for slot, i in zip(("selected", *KIND_SLOTS.values()), doc[key], strict=True):
                setattr(sel, slot, by_uid.get(uids[i]) if i >= 0 else None)
        log.info("restored %d layers from %s", len(layers), self.path)
        return meta
