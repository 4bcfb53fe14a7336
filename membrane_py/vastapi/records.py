"""Record layouts of VAST replies, defined once for the client and the bundled server.

Two kinds of record travel on the wire:

* **Bulk lists** (GETALLSEGMENTDATA, GETANNOLAYEROBJECTDATA, GETAONODEDATA,
  GETMIPMAPSCALEFACTORS): ``u32 N`` then N fixed-size little-endian records. Each layout is a
  numpy structured dtype below; :func:`encode_counted` / :func:`decode_counted` frame them.
  Name lists (GETALLSEGMENTNAMES, GETANNOLAYEROBJECTNAMES) are ``u32 N`` then N
  NUL-terminated strings (:func:`encode_names` / :func:`decode_names`).
* **Typed replies** with a fixed count of values per type (GETINFO, GETLAYERINFO,
  GETSEGMENTDATA, GETSELECTEDLAYERNR): a frozen dataclass per reply whose ``to_values``
  (server side) and ``from_grouped`` (client side) are the only places that know the order.

The server keeps its segment and annotation tables as int64 rows of 32-bit words in these
same layouts; :func:`word_columns` gives a field's column(s) and :func:`records_from_words`
turns rows into wire records, so the tables cannot drift from what the client decodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from membrane_py.geometry import Box, size_at_mip, volume_extent
from membrane_py.vastapi.protocol import Grouped, Value, f64, i32, text, u32

#: 0xFFFFFFFF in a node link word means "no node".
NONE32 = 0xFFFFFFFF
_COUNT = struct.Struct("<I")


class RecordError(ValueError):
    """A bulk payload whose size or terminators do not match its record layout."""


# --- bulk record layouts ----------------------------------------------------------------

#: GETALLSEGMENTDATA record (17 words); record k is segment k, 0 = background.
SEGMENT_RECORD = np.dtype([
    ("flags", "<u4"), ("col1", "<u4"), ("col2", "<u4"), ("anchor", "<i4", (3,)),
    ("parent", "<u4"), ("child", "<u4"), ("prev", "<u4"), ("next", "<u4"),
    ("collapsednr", "<u4"), ("bbox", "<i4", (6,)),
])
#: GETANNOLAYEROBJECTDATA record (21 words). ``flags``: object type (0 folder, 1 skeleton) in
#: the low 16 bits, state bits in the high 16 (bit 16 "is used", bit 24 "is expanded"). The user
#: flags and user id are 64-bit values sent as (lo, hi) words.
ANNO_RECORD = np.dtype([
    ("flags", "<u4"), ("col1", "<u4"), ("col2", "<u4"), ("anchor", "<u4", (3,)),
    ("parent", "<u4"), ("child", "<u4"), ("prev", "<u4"), ("next", "<u4"),
    ("collapsednr", "<u4"), ("bbox", "<i4", (6,)), ("userflags", "<u4", (2,)),
    ("userid", "<u4", (2,)),
])
#: GETAONODEDATA record (12 words): flags (bit 0 selected), x, y, z at mip 0, links (parent,
#: first child, next sibling as DFS numbers, NONE32 = none), an unused word, the radius
#: (double) and two words of unknown meaning.
NODE_RECORD = np.dtype([
    ("flags", "<u4"), ("xyz", "<u4", (3,)), ("links", "<u4", (3,)), ("w7", "<u4"),
    ("radius", "<f8"), ("w10", "<u4", (2,)),
])
#: GETMIPMAPSCALEFACTORS row: (fx, fy, fz); row m is mip m.
MIP_FACTORS_RECORD = np.dtype([("factors", "<u4", (3,))])

#: The "is used" bit of an annotation object's flags word.
ANNO_USED = 1 << 16


def word_columns(layout: np.dtype) -> dict[str, slice]:
    """Columns (32-bit word positions) of each field of an all-word record layout."""
    cols = {}
    for name in layout.names:
        sub, offset = layout.fields[name][:2]
        if sub.base.itemsize != 4 or offset % 4:
            raise TypeError(f"field {name} of {layout} is not made of 32-bit words")
        cols[name] = slice(offset // 4, (offset + sub.itemsize) // 4)
    return cols


def records_from_words(rows: np.ndarray, layout: np.dtype) -> np.ndarray:
    """Records of ``layout`` from int64 rows of its words (negative values wrap as int32)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, layout.itemsize // 4)
    words = np.ascontiguousarray((rows & 0xFFFFFFFF).astype("<u4"))
    return words.view(layout).reshape(len(rows))


def encode_counted(records: np.ndarray) -> np.ndarray:
    """``u32 N`` then the N records, as one uint8 array (a bulk reply payload)."""
    out = np.empty(4 + records.nbytes, dtype=np.uint8)
    _COUNT.pack_into(out, 0, len(records))
    out[4:] = np.ascontiguousarray(records).view(np.uint8).reshape(-1)
    return out


def decode_counted(payload: bytes | memoryview, layout: np.dtype) -> np.ndarray:
    """The N records of a ``u32 N`` + records payload; RecordError if the size is wrong."""
    if len(payload) < 4:
        raise RecordError("payload lacks the record count")
    (count,) = _COUNT.unpack_from(payload, 0)
    if len(payload) != 4 + count * layout.itemsize:
        raise RecordError(f"{len(payload)} bytes do not hold {count} records "
                          f"of {layout.itemsize} bytes")
    return np.frombuffer(payload, dtype=layout, count=count, offset=4)


def encode_names(names: list[str]) -> bytes:
    """``u32 N`` then N NUL-terminated latin-1 strings (a NUL inside a name becomes a space)."""
    raw = b"".join(n.replace("\0", " ").encode("latin-1", errors="replace") + b"\0"
                   for n in names)
    return _COUNT.pack(len(names)) + raw


def decode_names(payload: bytes | memoryview) -> list[str]:
    """The names of a ``u32 N`` + NUL-terminated strings payload; RecordError if malformed."""
    payload = bytes(payload)
    if len(payload) < 4:
        raise RecordError("payload lacks the name count")
    (count,) = _COUNT.unpack_from(payload, 0)
    parts = payload[4:].split(b"\0")
    if len(parts) != count + 1 or parts[-1]:
        raise RecordError(f"expected {count} NUL-terminated names")
    return [p.decode("latin-1") for p in parts[:-1]]


# --- typed replies ----------------------------------------------------------------------

Counts = tuple[int, int, int, int]  # (uint32, double, text, int32) values of a typed reply


@dataclass(frozen=True)
class VastInfo:
    """GETINFO: 7u size x,y,z, cube x,y,z, mips; 3d voxel x,y,z; 3i view x,y,z.

    The tuples ``data_size``, ``cube_size`` and ``voxel_size`` are (z, y, x), the order of
    numpy shapes here (the wire sends x, y, z); ``view`` is (x, y, z) at mip 0, as VAST
    shows it. To avoid confusing the two orders, read single axes by name: ``size_x``,
    ``size_y``, ``size_z`` (mip-0 voxels), ``voxel_x``, ``voxel_y``, ``voxel_z`` (nm),
    ``view_x``, ``view_y``, ``view_z``; :meth:`extent` prints the volume as VAST does.
    """

    COUNTS: ClassVar[Counts] = (7, 3, 0, 3)

    data_size: tuple[int, int, int]
    cube_size: tuple[int, int, int]
    n_mips: int
    voxel_size: tuple[float, float, float]
    view: tuple[int, int, int]

    @property
    def size_x(self) -> int:
        return self.data_size[2]

    @property
    def size_y(self) -> int:
        return self.data_size[1]

    @property
    def size_z(self) -> int:
        return self.data_size[0]

    @property
    def voxel_x(self) -> float:
        return self.voxel_size[2]

    @property
    def voxel_y(self) -> float:
        return self.voxel_size[1]

    @property
    def voxel_z(self) -> float:
        return self.voxel_size[0]

    @property
    def view_x(self) -> int:
        return self.view[0]

    @property
    def view_y(self) -> int:
        return self.view[1]

    @property
    def view_z(self) -> int:
        return self.view[2]

    def extent(self) -> str:
        """The volume as VAST's coordinates read: ``x 0..W-1, y 0..H-1, z 0..D-1``."""
        return volume_extent(self.data_size)

    def size_at(self, mip: int) -> tuple[int, int, int]:
        """(z, y, x) volume size at a mip level (x and y halved ``mip`` times)."""
        return size_at_mip(self.data_size, mip)

    def bounds(self, mip: int = 0) -> Box:
        """The whole volume as a box at a mip level."""
        return Box.full(self.size_at(mip))

    def to_values(self) -> list[Value]:
        return ([u32(v) for v in self.data_size[::-1]] + [u32(v) for v in self.cube_size[::-1]]
                + [u32(self.n_mips)] + [f64(v) for v in self.voxel_size[::-1]]
                + [i32(v) for v in self.view])

    @classmethod
    def from_grouped(cls, g: Grouped) -> VastInfo:
        u, d = g.uints, g.doubles
        return cls(data_size=(u[2], u[1], u[0]), cube_size=(u[5], u[4], u[3]), n_mips=u[6],
                   voxel_size=(d[2], d[1], d[0]), view=(g.ints[0], g.ints[1], g.ints[2]))


@dataclass(frozen=True)
class LayerInfo:
    """GETLAYERINFO (VAST 1.5): 8i, 3d, 7u, 1t in the order of the fields below."""

    COUNTS: ClassVar[Counts] = (7, 3, 1, 8)

    type: int
    editable: bool
    visible: bool
    brightness: int
    contrast: int
    blend_mode: int
    blend_or_add: int
    is_changed: bool
    opacity_level: float
    brightness_level: float
    contrast_level: float
    tint_color: int
    target_color: tuple[int, int, int]
    bytes_per_pixel: int
    inverted: bool
    solo_mode: bool
    name: str

    def to_values(self) -> list[Value]:
        ints = [self.type, self.editable, self.visible, self.brightness, self.contrast,
                self.blend_mode, self.blend_or_add, self.is_changed]
        doubles = [self.opacity_level, self.brightness_level, self.contrast_level]
        uints = [self.tint_color, *self.target_color, self.bytes_per_pixel, self.inverted,
                 self.solo_mode]
        return ([i32(v) for v in ints] + [f64(v) for v in doubles] + [u32(v) for v in uints]
                + [text(self.name)])

    @classmethod
    def from_grouped(cls, g: Grouped) -> LayerInfo:
        i, d, u = g.ints, g.doubles, g.uints
        return cls(
            type=i[0], editable=bool(i[1]), visible=bool(i[2]), brightness=i[3], contrast=i[4],
            blend_mode=i[5], blend_or_add=i[6], is_changed=bool(i[7]), opacity_level=d[0],
            brightness_level=d[1], contrast_level=d[2], tint_color=u[0],
            target_color=(u[1], u[2], u[3]), bytes_per_pixel=u[4], inverted=bool(u[5]),
            solo_mode=bool(u[6]), name=g.texts[0])


@dataclass(frozen=True)
class SelectedLayers:
    """GETSELECTEDLAYERNR / GETSELECTEDAPILAYERNR: 5i; -1 where no layer of that kind exists."""

    selected: int
    em: int
    annotation: int
    segmentation: int
    tool: int

    def to_values(self) -> list[Value]:
        return [i32(v) for v in (self.selected, self.em, self.annotation, self.segmentation,
                                 self.tool)]

    @classmethod
    def from_grouped(cls, g: Grouped) -> SelectedLayers:
        """Five int32 (VAST 1.5) or three (VAST 1.2: selected, EM, segmentation)."""
        if len(g.ints) == 3:
            return cls(g.ints[0], g.ints[1], -1, g.ints[2], -1)
        if len(g.ints) != 5:
            raise RecordError(f"expected 5 int32 values, got {len(g.ints)}")
        return cls(*g.ints)


@dataclass(frozen=True)
class SegmentData:
    """GETSEGMENTDATA: 9u id, flags, col1, col2, parent, child, prev, next, collapsednr;
    9i anchor x,y,z, bbox x1,y1,z1,x2,y2,z2. Links are segment ids (0 = none), mip 0."""

    COUNTS: ClassVar[Counts] = (9, 0, 0, 9)

    id: int
    flags: int
    col1: int
    col2: int
    anchor: tuple[int, int, int]
    parent: int
    child: int
    prev: int
    next: int
    collapsed_nr: int
    bbox: tuple[int, int, int, int, int, int]  # x1, y1, z1, x2, y2, z2

    @classmethod
    def from_record(cls, id: int, r: np.void) -> SegmentData:
        """Segment ``id`` from its SEGMENT_RECORD."""
        return cls(id=id, flags=int(r["flags"]), col1=int(r["col1"]), col2=int(r["col2"]),
                   anchor=_ints(r["anchor"]), parent=int(r["parent"]), child=int(r["child"]),
                   prev=int(r["prev"]), next=int(r["next"]), collapsed_nr=int(r["collapsednr"]),
                   bbox=_ints(r["bbox"]))

    def to_values(self) -> list[Value]:
        uints = [self.id, self.flags, self.col1, self.col2, self.parent, self.child, self.prev,
                 self.next, self.collapsed_nr]
        return [u32(v) for v in uints] + [i32(v) for v in (*self.anchor, *self.bbox)]

    @classmethod
    def from_grouped(cls, g: Grouped) -> SegmentData:
        u, i = g.uints, g.ints
        return cls(id=u[0], flags=u[1], col1=u[2], col2=u[3], anchor=(i[0], i[1], i[2]),
                   parent=u[4], child=u[5], prev=u[6], next=u[7], collapsed_nr=u[8],
                   bbox=(i[3], i[4], i[5], i[6], i[7], i[8]))


# --- decoded bulk records ---------------------------------------------------------------


@dataclass(frozen=True)
class AnnoObject:
    """One annotation object (1-based id); type 0 = folder, 1 = skeleton."""

    id: int
    type: int
    flags: int
    col1: int
    col2: int
    anchor: tuple[int, int, int]
    parent: int
    child: int
    prev: int
    next: int
    collapsed: int
    bbox: tuple[int, int, int, int, int, int]
    user_flags: int
    user_id: int

    @classmethod
    def from_record(cls, id: int, r: np.void) -> AnnoObject:
        """Object ``id`` from its ANNO_RECORD."""
        return cls(
            id=id, type=int(r["flags"]) & 0xFFFF, flags=int(r["flags"]) >> 16,
            col1=int(r["col1"]), col2=int(r["col2"]), anchor=_ints(r["anchor"]),
            parent=int(r["parent"]), child=int(r["child"]), prev=int(r["prev"]),
            next=int(r["next"]), collapsed=int(r["collapsednr"]), bbox=_ints(r["bbox"]),
            user_flags=_u64(r["userflags"]), user_id=_u64(r["userid"]))


@dataclass(frozen=True)
class SkeletonNode:
    """One node of the selected skeleton, numbered depth first from 0; links are -1 when absent."""

    dfs_nr: int
    x: int
    y: int
    z: int
    parent: int
    child: int
    next: int
    flags: int
    radius: float

    @classmethod
    def from_record(cls, dfs_nr: int, r: np.void) -> SkeletonNode:
        """Node ``dfs_nr`` from its NODE_RECORD."""
        x, y, z = _ints(r["xyz"])
        parent, child, nxt = (-1 if int(w) == NONE32 else int(w) for w in r["links"])
        return cls(dfs_nr=dfs_nr, x=x, y=y, z=z, parent=parent, child=child, next=nxt,
                   flags=int(r["flags"]), radius=float(r["radius"]))


def _ints(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in a)


def _u64(lo_hi: np.ndarray) -> int:
    return int(lo_hi[0]) | int(lo_hi[1]) << 32
