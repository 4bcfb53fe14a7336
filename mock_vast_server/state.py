"""The mock VAST's model: a facade over layers, segment tables, skeletons and their persistence.

:class:`MockVast` holds what a VAST instance holds (layers, UI and API selections, view) and
the operations commands need; the pieces live in :mod:`.tables` (segment / annotation
tables), :mod:`.layers` (layer objects and selection) and :mod:`.persistence` (the state
directory).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from membrane_py.geometry import Box
from membrane_py.volumes.base import VolumeSource
from mock_vast_server.layers import AnnoLayer, Layer, LayerKind, LoadPolicy, Selection
from mock_vast_server.persistence import Meta, StateDir, default_state_dir
from mock_vast_server.skeletons import load_skeletons
from mock_vast_server.tables import (
    ANCHOR,
    BBOX,
    SEG_MAX_ID,
    anchor_in,
    empty_segment_table,
    new_segment_rows,
    segment_table_for,
)

log = logging.getLogger("mock_vast_server")

SLAB = 16  # sections per read when importing a label volume


class StateError(Exception):
    """A request the model refuses; ``code`` is the VAST error code to send back."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        allow_load: Sequence[Path] = (),
    ) -> None:
        """``allow_load``: directories LOADLAYER may read besides the state dir."""
        self.em = em
        self.max_bytes = int(max_bytes)
        self.without: set[int] = set()  # commands answered with error 1, as an older VAST
        self.lock = threading.RLock()
        if state_dir is None:
            state_dir = default_state_dir(f"{em.name}:{em!r}")
        self.store = StateDir(Path(state_dir))
        self.state_dir = self.store.path
        log.info("state dir: %s", self.state_dir)
        self.load_policy = LoadPolicy(tuple(Path(d).resolve()
                                            for d in (self.state_dir, *allow_load)))
        self.layers: list[Layer] = []
        self.ui = Selection()
        self.api = Selection()
        self.api_enabled = 0
        self.view = [em.shape[2] // 2, em.shape[1] // 2, em.shape[0] // 2]
        self.zoom = 0
        self.translation: np.ndarray | None = None
        self.selected_segment = 0
        self.popups: dict[int, int] = {}
        if self.store.exists():
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
        self.store.save_anno(anno)
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
        self.store.save_table(layer)
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
        layer.seg = self.store.create_seg(layer, self.em.shape)
        self._insert(layer, after)
        self.store.save_table(layer)
        return layer

    def _insert(self, layer: Layer, after: int | None) -> int:
        pos = len(self.layers) if after is None else min(after + 1, len(self.layers))
        self.layers.insert(pos, layer)
        return pos

    def save_meta(self) -> None:
        self.store.save_meta(self.em.shape, Meta(self.layers, self.ui, self.api,
                                                 self.api_enabled, self.view, self.zoom))

    def save_layer(self, layer: Layer) -> None:
        if layer.seg is not None:
            layer.seg.flush()
            self.store.save_table(layer)
        if layer.anno is not None:
            self.store.save_anno(layer)
        self.save_meta()

    def segments_changed(self, layer: Layer) -> None:
        """Persist the rows of ``layer``'s segment table changed by the current command."""
        self.store.journal_table(layer)

    def _restore(self) -> None:
        meta = self.store.restore(self.em, self.load_policy.open)
        self.layers, self.ui, self.api = meta.layers, meta.ui, meta.api
        self.api_enabled, self.view, self.zoom = meta.api_enabled, meta.view, meta.zoom

    def close(self) -> None:
        """Flush every layer, fold the journals into snapshots, and unlock the state dir."""
        with self.lock:
            if self.store.closed:
                return
            for layer in self.layers:
                if layer.seg is not None:
                    layer.seg.flush()
                    self.store.save_table(layer)
            self.store.close()

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
                self.store.save_anno(layer)
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
        self.store.remove(layer)

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
        self.segments_changed(layer)

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
                table.set(i, BBOX, lo + hi)
                x, y, z = anchor_in(block, sl, i)
                table.set(i, ANCHOR, [(box.x0 + x) * f, (box.y0 + y) * f, box.z0 + z])
            else:
                table.set(i, BBOX, np.concatenate([np.minimum(bb[:3], lo),
                                                   np.maximum(bb[3:], hi)]))

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
