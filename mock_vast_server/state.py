"""The mock VAST's model: layers, segment tables, skeleton layers, and their persistence.

Layers are numbered from 0 in list order. ``GETLAYERINFO`` type codes are not documented for
VAST 1.5; this server uses :class:`LayerKind`: 0 = image, 1 = segmentation (as the older
VastTools assumes), 2 = annotation, 3 = tool.

Persistence (everything a client changes survives a restart with the same state dir):
``state.json`` (layer list, selections, view), ``seg_<uid>.npy`` (a memory-mapped uint16
volume per segmentation layer, flushed after every write), ``segments_<uid>.json`` (its segment
table) and ``anno_<uid>.json`` (annotation objects and skeleton nodes). JSON files are written
atomically (temporary file, then ``os.replace``).

Segment and annotation tables are int64 arrays with one row per id, in the column layout of
``GETALLSEGMENTDATA`` (flags, col1, col2, anchor xyz, parent, child, prev, next, collapsednr,
bbox x1,y1,z1,x2,y2,z2); annotation rows add userflags lo/hi and userid lo/hi. Row 0 of a
segment table is the background; row 0 of an annotation table is unused (objects count from 1).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from scipy import ndimage

from membrane_py.atomic import write_text_atomic
from membrane_py.geometry import Box
from membrane_py.vastapi.records import ANNO_RECORD, ANNO_USED, SEGMENT_RECORD, word_columns
from membrane_py.volumes.base import VolumeSource
from mock_vast_server.skeletons import Skeleton, SkelNode, load_skeletons

log = logging.getLogger("mock_vast_server")

STATE_VERSION = 1
SEG_MAX_ID = 0xFFFF
SLAB = 16  # sections per read when importing a label volume

# Columns of a segment / annotation-object table row: the words of the wire records, so the
# two layouts share the first 17 columns.
_COLUMNS = word_columns(SEGMENT_RECORD)
FLAGS, COL1, COL2 = (_COLUMNS[f].start for f in ("flags", "col1", "col2"))
ANCHOR, BBOX = _COLUMNS["anchor"], _COLUMNS["bbox"]
PARENT, CHILD, PREV, NEXT, COLLAPSED = (
    _COLUMNS[f].start for f in ("parent", "child", "prev", "next", "collapsednr"))
SEG_COLS, ANNO_COLS = SEGMENT_RECORD.itemsize // 4, ANNO_RECORD.itemsize // 4
SELECTED_FLAG = 1 << 16  # VastTools reads (flags >> 16) & 3 as the selection state


class LayerKind(IntEnum):
    """Layer type codes reported by GETLAYERINFO (our choice; VAST 1.5's are undocumented)."""

    IMAGE = 0
    SEGMENTATION = 1
    ANNOTATION = 2
    TOOL = 3


PROP_DEFAULTS: dict[str, int | float] = {
    "editable": 1, "visible": 1, "brightness": 0, "contrast": 0, "opacity": 1.0,
    "brightnesslevel": 0.0, "contrastlevel": 0.0, "blendmode": 0, "blendoradd": 0,
    "tintcolor": 0xFFFFFF00, "redtarget": 0xFF, "greentarget": 0xFF, "bluetarget": 0xFF,
    "inverted": 0, "solomode": 0,
}


class StateError(Exception):
    """A request the model refuses; ``code`` is the VAST error code to send back."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def segment_color(i: int) -> int:
    """A distinct, deterministic packed colour (r<<24 | g<<16 | b<<8) for segment ``i``."""
    hue = (i * 0.618033988749895) % 1.0
    sat = 0.55 + 0.4 * ((i * 7919) % 5) / 4
    r, g, b = (int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, 0.95))
    return (r << 24) | (g << 16) | (b << 8)


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


# --- tables with VAST's sibling/child hierarchy ------------------------------------------


@dataclass
class Table:
    """Rows of records (int64) plus names; row ids are the VAST segment / object numbers."""

    rec: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def append(self, rows: np.ndarray, names: list[str]) -> None:
        self.rec = np.concatenate([self.rec, rows.astype(np.int64)])
        self.names.extend(names)

    def first_top(self, exclude: int = 0, limit: int | None = None) -> int:
        """The first top-level row (parent 0, no previous sibling) below ``limit``, else 0."""
        rec = self.rec[:limit]
        top = (rec[:, PARENT] == 0) & (rec[:, PREV] == 0)
        top[0] = False
        if exclude < len(top):
            top[exclude] = False
        hits = np.flatnonzero(top)
        return int(hits[0]) if hits.size else 0

    def append_top(self, ids: np.ndarray) -> None:
        """Chain new rows ``ids`` (consecutive, already appended) after the last top-level row."""
        last = self._last_sibling(self.first_top(limit=int(ids[0])))
        chain = np.concatenate([[last], ids, [0]])
        self.rec[ids, PREV] = chain[:-2]
        self.rec[ids, NEXT] = chain[2:]
        self.rec[ids, PARENT] = 0
        if last:
            self.rec[last, NEXT] = ids[0]

    def _last_sibling(self, first: int) -> int:
        while first and self.rec[first, NEXT]:
            first = int(self.rec[first, NEXT])
        return first

    def is_ancestor(self, a: int, b: int) -> bool:
        """Whether ``a`` is ``b`` or one of its ancestors."""
        while b:
            if a == b:
                return True
            b = int(self.rec[b, PARENT])
        return False

    def link(self, i: int, ref: int, as_child: bool) -> None:
        """Put row ``i`` as last child of ``ref``, after sibling ``ref``, or at the end (ref 0)."""
        r = self.rec
        if ref and not as_child:
            r[i, PARENT], r[i, PREV], r[i, NEXT] = r[ref, PARENT], ref, r[ref, NEXT]
            if r[ref, NEXT]:
                r[r[ref, NEXT], PREV] = i
            r[ref, NEXT] = i
            return
        parent = ref if as_child else 0
        last = self._last_sibling(int(r[parent, CHILD]) if parent else self.first_top(exclude=i))
        r[i, PARENT], r[i, PREV], r[i, NEXT] = parent, last, 0
        if last:
            r[last, NEXT] = i
        elif parent:
            r[parent, CHILD] = i

    def unlink(self, i: int) -> None:
        r = self.rec
        prev, nxt, parent = int(r[i, PREV]), int(r[i, NEXT]), int(r[i, PARENT])
        if prev:
            r[prev, NEXT] = nxt
        elif parent:
            r[parent, CHILD] = nxt
        if nxt:
            r[nxt, PREV] = prev
        r[i, PARENT] = r[i, PREV] = r[i, NEXT] = 0

    def to_json(self) -> dict:
        return {"rec": self.rec.tolist(), "names": self.names}

    @classmethod
    def from_json(cls, doc: dict, ncols: int) -> Table:
        rec = np.asarray(doc["rec"], dtype=np.int64).reshape(-1, ncols)
        return cls(rec, list(doc["names"]))


def new_segment_rows(ids: np.ndarray) -> np.ndarray:
    """Fresh segment rows (no hierarchy yet, anchor/bbox unknown) for the given ids."""
    rows = np.zeros((len(ids), SEG_COLS), dtype=np.int64)
    for k, i in enumerate(ids):
        rows[k, COL1] = rows[k, COL2] = segment_color(int(i))
        rows[k, COLLAPSED] = int(i)
    rows[:, ANCHOR] = -1
    rows[:, BBOX] = -1
    return rows


def empty_segment_table() -> Table:
    rec = np.zeros((1, SEG_COLS), dtype=np.int64)
    rec[0, ANCHOR] = -1
    rec[0, BBOX] = -1
    return Table(rec, ["Background"])


def segment_table_for(seg: np.ndarray) -> Table:
    """One segment per id 1..max of a label volume: names, colours, flat list, bbox, anchor."""
    table = empty_segment_table()
    objects = ndimage.find_objects(seg)
    n = len(objects)
    if n == 0:
        return table
    ids = np.arange(1, n + 1)
    rows = new_segment_rows(ids)
    rows[:, PREV] = ids - 1
    rows[:, NEXT] = np.where(ids < n, ids + 1, 0)
    for k, sl in enumerate(objects):
        if sl is None:
            continue
        i = k + 1
        rows[k, BBOX] = [sl[2].start, sl[1].start, sl[0].start,
                         sl[2].stop - 1, sl[1].stop - 1, sl[0].stop - 1]
        rows[k, ANCHOR] = _anchor_in(seg, sl, i)
    table.append(rows, [f"segment {i}" for i in ids])
    return table


def _anchor_in(seg: np.ndarray, sl: tuple[slice, ...], i: int) -> list[int]:
    """A voxel (x, y, z) of segment ``i`` near the middle of its bounding box ``sl``."""
    zmid = (sl[0].start + sl[0].stop - 1) // 2
    ys, xs = np.nonzero(seg[zmid, sl[1], sl[2]] == i)
    if len(ys):
        k = len(ys) // 2
        return [int(xs[k]) + sl[2].start, int(ys[k]) + sl[1].start, zmid]
    z, y, x = np.argwhere(seg[sl] == i)[0]
    return [int(x) + sl[2].start, int(y) + sl[1].start, int(z) + sl[0].start]


# --- layers ----------------------------------------------------------------------------


@dataclass
class AnnoLayer:
    """Annotation objects (folders and skeletons) with their nodes; ids count from 1."""

    table: Table = field(default_factory=lambda: Table(np.zeros((1, ANNO_COLS), np.int64), [""]))
    nodes: list[list[SkelNode]] = field(default_factory=lambda: [[]])
    selected_node: list[int] = field(default_factory=lambda: [-1])
    selected: int = 0

    def add_object(self, name: str, kind: int, ref: int = 0, as_child: bool = False) -> int:
        i = len(self.table)
        row = np.zeros((1, ANNO_COLS), np.int64)
        row[0, FLAGS] = kind | ANNO_USED
        row[0, COL1] = row[0, COL2] = segment_color(i)
        row[0, COLLAPSED] = i
        self.table.append(row, [name])
        self.nodes.append([])
        self.selected_node.append(-1)
        self.table.link(i, ref, as_child)
        return i

    def add_skeleton(self, skel: Skeleton) -> int:
        i = self.add_object(skel.name, 1)
        self.nodes[i] = list(skel.nodes)
        self.update_extent(i)
        return i

    def update_extent(self, i: int) -> None:
        """Anchor (first node) and bounding box of object ``i`` from its nodes."""
        nodes = self.nodes[i]
        if not nodes:
            return
        xyz = np.array([(n.x, n.y, n.z) for n in nodes], dtype=np.int64)
        self.table.rec[i, ANCHOR] = xyz[0]
        self.table.rec[i, BBOX] = np.concatenate([xyz.min(0), xyz.max(0)])

    def to_json(self) -> dict:
        return {
            "table": self.table.to_json(),
            "nodes": [[[n.x, n.y, n.z, n.parent, n.radius] for n in ns] for ns in self.nodes],
            "selected_node": self.selected_node,
            "selected": self.selected,
        }

    @classmethod
    def from_json(cls, doc: dict) -> AnnoLayer:
        nodes = [[SkelNode(int(x), int(y), int(z), int(p), float(r)) for x, y, z, p, r in ns]
                 for ns in doc["nodes"]]
        return cls(Table.from_json(doc["table"], ANNO_COLS), nodes, list(doc["selected_node"]),
                   int(doc["selected"]))


@dataclass(eq=False)
class Layer:
    kind: LayerKind
    name: str
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    volume: VolumeSource | None = None  # image layers
    source: str | None = None  # spec of a LOADLAYER image; None for the server's EM volume
    seg: np.ndarray | None = None  # segmentation layers: uint16 (z, y, x) memmap at mip 0
    segments: Table | None = None
    anno: AnnoLayer | None = None
    props: dict = field(default_factory=lambda: dict(PROP_DEFAULTS))

    @property
    def bytes_per_pixel(self) -> int:
        if self.kind is LayerKind.IMAGE:
            return np.dtype(self.volume.dtype).itemsize * self.volume.channels
        return 2 if self.kind is LayerKind.SEGMENTATION else 0


KIND_SLOTS = {LayerKind.IMAGE: "em", LayerKind.ANNOTATION: "anno",
              LayerKind.SEGMENTATION: "seg", LayerKind.TOOL: "tool"}


@dataclass
class Selection:
    """Selected layer overall and the last selected layer of each kind (19 / 103 replies)."""

    selected: Layer | None = None
    em: Layer | None = None
    anno: Layer | None = None
    seg: Layer | None = None
    tool: Layer | None = None

    def select(self, layer: Layer) -> None:
        self.selected = layer
        setattr(self, KIND_SLOTS[layer.kind], layer)

    def forget(self, layer: Layer) -> None:
        for slot in ("selected", *KIND_SLOTS.values()):
            if getattr(self, slot) is layer:
                setattr(self, slot, None)

    def slots(self) -> list[Layer | None]:
        return [self.selected, self.em, self.anno, self.seg, self.tool]


# --- the server state ------------------------------------------------------------------


class MockVast:
    """Everything a VAST instance holds, over a local EM volume, with on-disk persistence.

    All methods that touch layers must run under ``self.lock`` (the command handlers do).
    """

    def __init__(
        self,
        em: VolumeSource,
        labels: VolumeSource | None = None,
        skeletons: Path | None = None,
        state_dir: Path | None = None,
        max_bytes: int = 1 << 30,
    ) -> None:
        self.em = em
        self.max_bytes = int(max_bytes)
        self.lock = threading.RLock()
        if state_dir is None:
            state_dir = default_state_dir(f"{em.name}:{em!r}")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("state dir: %s", self.state_dir)
        self.layers: list[Layer] = []
        self.ui = Selection()
        self.api = Selection()
        self.api_enabled = 0
        self.view = [em.shape[2] // 2, em.shape[1] // 2, em.shape[0] // 2]
        self.zoom = 0
        self.translation: np.ndarray | None = None
        self.selected_segment = 0
        self.popups: dict[int, int] = {}
        if (self.state_dir / "state.json").exists():
            self._restore()
            if labels is not None or skeletons is not None:
                log.info("restored state from %s; labels/skeletons arguments are not re-imported",
                         self.state_dir)
        else:
            self._create(labels, skeletons)

    # -- creation and persistence --

    def _create(self, labels: VolumeSource | None, skeletons: Path | None) -> None:
        em_layer = Layer(LayerKind.IMAGE, self.em.name, volume=self.em)
        self.layers.append(em_layer)
        for sel in (self.ui, self.api):
            sel.select(em_layer)
        gt = None if labels is None else self.import_labels(labels)
        anno = Layer(LayerKind.ANNOTATION, "skeletons", anno=AnnoLayer())
        if skeletons is not None:
            for skel in load_skeletons(skeletons):
                anno.anno.add_skeleton(skel)
            log.info("loaded %d skeletons from %s", len(anno.anno.table) - 1, skeletons)
        self.layers.append(anno)
        for sel in (self.ui, self.api):
            sel.select(anno)
            if gt is not None:
                sel.select(gt)
        self._save_anno(anno)
        self.save_meta()

    def import_labels(self, labels: VolumeSource) -> Layer:
        """Add the "ground truth" segmentation layer from a label volume (ids made uint16)."""
        if labels.shape != self.em.shape:
            raise ValueError(f"labels {labels.name} have shape {labels.shape} but the EM volume "
                             f"{self.em.name} has {self.em.shape}; they must match")
        lut = self._label_lut(labels)
        layer = self._new_seg_layer("ground truth")
        for box in _slabs(self.em.shape):
            ids = labels.read(box)
            layer.seg[box.slices()] = ids if lut is None else _apply_lut(lut, ids)
        layer.seg.flush()
        layer.segments = segment_table_for(layer.seg)
        self._save_table(layer)
        return layer

    def _label_lut(self, labels: VolumeSource) -> tuple[np.ndarray, np.ndarray] | None:
        """None when ids already fit uint16, else (sorted original ids, new ids 1..n)."""
        uniq = np.zeros(0, dtype=np.int64)
        for box in _slabs(labels.shape):
            uniq = np.union1d(uniq, np.unique(labels.read(box)).astype(np.int64))
        if uniq.size and uniq[0] < 0:
            raise ValueError(f"labels {labels.name} contain negative ids ({uniq[0]}); "
                             f"segment ids must be >= 0")
        if not uniq.size or uniq[-1] <= SEG_MAX_ID:
            return None
        nonzero = uniq[uniq > 0]
        if nonzero.size > SEG_MAX_ID:
            raise ValueError(f"labels {labels.name} hold {nonzero.size} distinct ids; VAST carries "
                             f"at most {SEG_MAX_ID}. Merge or crop the labels first.")
        log.warning("labels %s: ids up to %d exceed uint16; remapped %d ids to 1..%d in sorted "
                    "order (0 stays 0)", labels.name, uniq[-1], nonzero.size, nonzero.size)
        return nonzero, np.arange(1, nonzero.size + 1, dtype=np.uint16)

    def _new_seg_layer(self, name: str, after: int | None = None) -> Layer:
        layer = Layer(LayerKind.SEGMENTATION, name, segments=empty_segment_table())
        layer.seg = open_memmap(self.state_dir / f"seg_{layer.uid}.npy", mode="w+",
                                dtype=np.uint16, shape=self.em.shape)
        self._insert(layer, after)
        self._save_table(layer)
        return layer

    def _insert(self, layer: Layer, after: int | None) -> int:
        pos = len(self.layers) if after is None else min(after + 1, len(self.layers))
        self.layers.insert(pos, layer)
        return pos

    def save_meta(self) -> None:
        def idx(layer: Layer | None) -> int:
            return -1 if layer is None else self.layers.index(layer)

        doc = {
            "version": STATE_VERSION,
            "shape": list(self.em.shape),
            "layers": [{"uid": la.uid, "kind": int(la.kind), "name": la.name, "source": la.source,
                        "props": la.props} for la in self.layers],
            "ui": [idx(la) for la in self.ui.slots()],
            "api": [idx(la) for la in self.api.slots()],
            "api_enabled": self.api_enabled,
            "view": self.view,
            "zoom": self.zoom,
        }
        write_json_atomic(self.state_dir / "state.json", doc)

    def _save_table(self, layer: Layer) -> None:
        write_json_atomic(self.state_dir / f"segments_{layer.uid}.json", layer.segments.to_json())

    def _save_anno(self, layer: Layer) -> None:
        write_json_atomic(self.state_dir / f"anno_{layer.uid}.json", layer.anno.to_json())

    def save_layer(self, layer: Layer) -> None:
        if layer.seg is not None:
            layer.seg.flush()
            self._save_table(layer)
        if layer.anno is not None:
            self._save_anno(layer)
        self.save_meta()

    def _restore(self) -> None:
        doc = json.loads((self.state_dir / "state.json").read_text())
        if tuple(doc["shape"]) != tuple(self.em.shape):
            raise ValueError(
                f"state dir {self.state_dir} belongs to a volume of shape {tuple(doc['shape'])}, "
                f"not {self.em.shape} ({self.em.name}); pass another --state directory")
        for d in doc["layers"]:
            layer = Layer(LayerKind(d["kind"]), d["name"], uid=d["uid"], source=d["source"],
                          props={**PROP_DEFAULTS, **d["props"]})
            if layer.kind is LayerKind.IMAGE:
                if layer.source is None:
                    layer.volume = self.em
                else:
                    try:
                        layer.volume = open_image(layer.source)
                    except Exception as exc:  # noqa: BLE001 - keep serving the rest
                        log.warning("cannot reopen image layer %s (%s): %s; dropping it",
                                    layer.name, layer.source, exc)
                        continue
            elif layer.kind is LayerKind.SEGMENTATION:
                layer.seg = np.load(self.state_dir / f"seg_{layer.uid}.npy", mmap_mode="r+")
                segdoc = json.loads((self.state_dir / f"segments_{layer.uid}.json").read_text())
                layer.segments = Table.from_json(segdoc, SEG_COLS)
            elif layer.kind is LayerKind.ANNOTATION:
                annodoc = json.loads((self.state_dir / f"anno_{layer.uid}.json").read_text())
                layer.anno = AnnoLayer.from_json(annodoc)
            self.layers.append(layer)
        by_uid = {la.uid: la for la in self.layers}
        uids = [d["uid"] for d in doc["layers"]]
        for sel, key in ((self.ui, "ui"), (self.api, "api")):
            for slot, i in zip(("selected", *KIND_SLOTS.values()), doc[key], strict=True):
                setattr(sel, slot, by_uid.get(uids[i]) if i >= 0 else None)
        self.api_enabled = int(doc["api_enabled"])
        self.view = list(doc["view"])
        self.zoom = int(doc["zoom"])
        log.info("restored %d layers from %s", len(self.layers), self.state_dir)

    def close(self) -> None:
        with self.lock:
            for layer in self.layers:
                if layer.seg is not None:
                    layer.seg.flush()

    # -- layer access --

    def layer(self, nr: int, kind: LayerKind | None = None) -> Layer:
        if not 0 <= nr < len(self.layers):
            raise StateError(30, f"layer {nr} does not exist (0..{len(self.layers) - 1})")
        layer = self.layers[nr]
        if kind is not None and layer.kind is not kind:
            raise StateError(31, f"layer {nr} is a {layer.kind.name.lower()} layer, "
                                 f"not {kind.name.lower()}")
        return layer

    @property
    def target(self) -> Selection:
        """The selection data commands act on: the API selection when API layers are enabled."""
        return self.api if self.api_enabled else self.ui

    def selected_seg(self) -> Layer:
        layer = self.target.seg
        if layer is None:
            raise StateError(21, "no segmentation layer is selected")
        return layer

    def selected_anno(self) -> AnnoLayer:
        layer = self.target.anno
        if layer is None:
            raise StateError(21, "no annotation layer is selected")
        return layer.anno

    def n_mips(self, layer: Layer) -> int:
        return layer.volume.n_mips if layer.kind is LayerKind.IMAGE else self.em.n_mips

    def shape(self, layer: Layer) -> tuple[int, int, int]:
        return layer.volume.shape if layer.kind is LayerKind.IMAGE else self.em.shape

    def check_box(self, layer: Layer, mip: int, vast_box: list[int], itemsize: int) -> Box:
        """Validate mip and inclusive wire box against the layer, and the reply size limit."""
        if not 0 <= mip < self.n_mips(layer):
            raise StateError(11, f"mip {mip} out of range 0..{self.n_mips(layer) - 1}")
        minx, maxx, miny, maxy, minz, maxz = vast_box
        if minx > maxx or miny > maxy or minz > maxz:
            raise StateError(10, f"box {vast_box} has min > max")
        z, y, x = self.shape(layer)
        if maxx >= x >> mip or maxy >= y >> mip or maxz >= z:
            raise StateError(10, f"box {vast_box} outside the volume ({x >> mip}, {y >> mip}, {z}) "
                                 f"(x, y, z) at mip {mip}")
        box = Box.from_vast(*vast_box)
        if box.size * itemsize > self.max_bytes:
            raise StateError(12, f"{box.size * itemsize} bytes exceed the limit of "
                                 f"{self.max_bytes}")
        return box

    def add_layer(self, kind: LayerKind, name: str, after: int, volume: VolumeSource | None = None,
                  source: str | None = None) -> int:
        after = after if after >= 0 else self.layers.index(self.ui.selected or self.layers[-1])
        if kind is LayerKind.SEGMENTATION:
            layer = self._new_seg_layer(name, after)
        else:
            layer = Layer(kind, name, volume=volume, source=source,
                          anno=AnnoLayer() if kind is LayerKind.ANNOTATION else None)
            self._insert(layer, after)
            if layer.anno is not None:
                self._save_anno(layer)
        self.save_meta()
        return self.layers.index(layer)

    def remove_layer(self, nr: int) -> None:
        layer = self.layer(nr)
        if layer.kind is LayerKind.IMAGE and layer.source is None:
            raise StateError(32, "the server's own EM layer cannot be removed")
        self.layers.remove(layer)
        self.ui.forget(layer)
        self.api.forget(layer)
        self.save_meta()
        for f in self.state_dir.glob(f"*_{layer.uid}.*"):
            f.unlink(missing_ok=True)

    # -- segmentation voxels --

    def read_seg(self, layer: Layer, mip: int, box: Box) -> np.ndarray:
        f = 1 << mip
        data = layer.seg[box.z0:box.z1, box.y0 * f:box.y1 * f:f, box.x0 * f:box.x1 * f:f]
        if self.translation is not None:
            return self.translation[data]
        return np.ascontiguousarray(data)

    def write_seg(self, layer: Layer, mip: int, box: Box, block: np.ndarray) -> None:
        """Paint a (z, y, x) uint16 block at ``mip``; a voxel covers 2^mip x 2^mip at mip 0."""
        f = 1 << mip
        full = box.to_mip0(mip)
        up = block if f == 1 else np.repeat(np.repeat(block, f, axis=1), f, axis=2)
        layer.seg[full.slices()] = up
        layer.seg.flush()
        self._note_painted(layer, mip, box, block)
        self._save_table(layer)

    def _note_painted(self, layer: Layer, mip: int, box: Box, block: np.ndarray) -> None:
        """Extend the segment table with new ids and grow bounding boxes to cover the paint."""
        table = layer.segments
        top = int(block.max(initial=0))
        if top >= len(table):
            new = np.arange(len(table), top + 1)
            table.append(new_segment_rows(new), [f"segment {i}" for i in new])
            table.append_top(new)
        f = 1 << mip
        for k, sl in enumerate(ndimage.find_objects(block)):
            if sl is None:
                continue
            i = k + 1
            z, y, x = sl
            lo = [(box.x0 + x.start) * f, (box.y0 + y.start) * f, box.z0 + z.start]
            hi = [(box.x0 + x.stop) * f - 1, (box.y0 + y.stop) * f - 1, box.z0 + z.stop - 1]
            bb = table.rec[i, BBOX]
            if bb[0] < 0:
                table.rec[i, BBOX] = lo + hi
                x, y, z = _anchor_in(block, sl, i)
                table.rec[i, ANCHOR] = [(box.x0 + x) * f, (box.y0 + y) * f, box.z0 + z]
            else:
                table.rec[i, BBOX] = np.concatenate([np.minimum(bb[:3], lo),
                                                     np.maximum(bb[3:], hi)])

    def set_translation(self, pairs: np.ndarray) -> None:
        if pairs.size == 0:
            self.translation = None
            return
        lut = np.zeros(SEG_MAX_ID + 1, dtype=np.uint16)
        src, dst = pairs[0::2], pairs[1::2]
        if src.max() > SEG_MAX_ID or dst.max() > SEG_MAX_ID:
            raise StateError(3, "segment translation ids must be <= 65535")
        lut[src] = dst
        self.translation = lut


def _slabs(shape: tuple[int, int, int]) -> list[Box]:
    """Whole-section boxes of SLAB sections covering a volume."""
    z, y, x = shape
    return [Box(z0, min(z0 + SLAB, z), 0, y, 0, x) for z0 in range(0, z, SLAB)]


def _apply_lut(lut: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> np.ndarray:
    keys, values = lut
    out = np.zeros(ids.shape, dtype=np.uint16)
    nz = ids > 0
    out[nz] = values[np.searchsorted(keys, ids[nz])]
    return out


def open_image(spec: str) -> VolumeSource:
    """An image volume for LOADLAYER / restored layers (H1's open_volume)."""
    from membrane_py.volumes import open_volume

    return open_volume(spec)
