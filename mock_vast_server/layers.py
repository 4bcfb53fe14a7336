"""Layers of the mock VAST and the layer selections (UI and API) that commands act on.

``GETLAYERINFO`` type codes are not documented for VAST 1.5; this server uses
:class:`LayerKind`: 0 = image, 1 = segmentation (as the older VastTools assumes),
2 = annotation, 3 = tool.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from membrane_py.vastapi.records import ANNO_USED
from membrane_py.volumes.base import VolumeSource
from mock_vast_server.skeletons import Skeleton, SkelNode
from mock_vast_server.tables import (
    ANCHOR,
    ANNO_COLS,
    BBOX,
    COL1,
    COL2,
    COLLAPSED,
    FLAGS,
    Table,
    segment_color,
)


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
        self.table.set(i, ANCHOR, xyz[0])
        self.table.set(i, BBOX, np.concatenate([xyz.min(0), xyz.max(0)]))

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


#: Largest synthetic volume LOADLAYER generates (voxels); it is built in memory, about
#: 8 bytes per voxel while loaded.
MAX_SYNTHETIC_VOXELS = 1 << 24


class LoadRefused(ValueError):
    """LOADLAYER named something this server will not open."""


def open_image(spec: str) -> VolumeSource:
    """An image volume for LOADLAYER / restored layers, owned by the caller alone.

    ``open_volume`` memoises synthetic volumes; the memo is cleared so that a removed
    layer's arrays are freed with the layer.
    """
    from membrane_py.volumes import open_volume
    from membrane_py.volumes.synthetic import synthetic_volumes

    try:
        return open_volume(spec)
    finally:
        synthetic_volumes.cache_clear()


@dataclass(frozen=True)
class LoadPolicy:
    """What LOADLAYER may open: files under ``roots`` (the served volume's directory, the
    state dir, ``--allow-load`` directories) and synthetic volumes up to a size.

    Without it, one small request could read any image the server's user can read, or make
    the server allocate gigabytes.
    """

    roots: tuple[Path, ...]
    max_synthetic_voxels: int = MAX_SYNTHETIC_VOXELS

    def open(self, spec: str) -> VolumeSource:
        """The volume of ``spec``; LoadRefused when the policy forbids it."""
        from membrane_py.volumes.open import _parse_synthetic, _split_inner

        if spec == "synthetic" or spec.startswith("synthetic:"):
            shape, _ = _parse_synthetic(spec)
            if math.prod(shape) > self.max_synthetic_voxels:
                raise LoadRefused(f"{spec}: {math.prod(shape)} voxels exceed the limit of "
                                  f"{self.max_synthetic_voxels} for a synthetic layer")
        else:
            path = _split_inner(spec)[0].resolve()
            if not any(path.is_relative_to(root) for root in self.roots):
                raise LoadRefused(
                    f"{spec} is outside the directories layers may be loaded from "
                    f"({', '.join(map(str, self.roots))}); start the server with "
                    f"--allow-load DIR to add one")
        return open_image(spec)
