"""Segment and annotation-object tables: rows of record words with VAST's hierarchy links.

A table is an int64 array with one row per id, holding the 32-bit words of the wire record
(:data:`~membrane_py.vastapi.records.SEGMENT_RECORD` for segments, ``ANNO_RECORD`` for
annotation objects, whose first 17 columns coincide), plus a name per row. Row 0 of a segment
table is the background; row 0 of an annotation table is unused (objects count from 1).
Hierarchy links (parent, child, prev, next) are row ids, 0 = none.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from membrane_py.vastapi.client import pack_color
from membrane_py.vastapi.records import ANNO_RECORD, SEGMENT_RECORD, word_columns

SEG_MAX_ID = 0xFFFF

# Columns of a segment / annotation-object table row: the words of the wire records, so the
# two layouts share the first 17 columns.
_COLUMNS = word_columns(SEGMENT_RECORD)
FLAGS, COL1, COL2 = (_COLUMNS[f].start for f in ("flags", "col1", "col2"))
ANCHOR, BBOX = _COLUMNS["anchor"], _COLUMNS["bbox"]
PARENT, CHILD, PREV, NEXT, COLLAPSED = (
    _COLUMNS[f].start for f in ("parent", "child", "prev", "next", "collapsednr"))
SEG_COLS, ANNO_COLS = SEGMENT_RECORD.itemsize // 4, ANNO_RECORD.itemsize // 4
SELECTED_FLAG = 1 << 16  # VastTools reads (flags >> 16) & 3 as the selection state


def segment_color(i: int) -> int:
    """A distinct, deterministic packed colour (r<<24 | g<<16 | b<<8) for segment ``i``."""
    hue = (i * 0.618033988749895) % 1.0
    sat = 0.55 + 0.4 * ((i * 7919) % 5) / 4
    r, g, b = (int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, 0.95))
    return pack_color(r, g, b)


@dataclass
class Table:
    """Rows of records (int64) plus names; row ids are the VAST segment / object numbers.

    Every change goes through a method that records the row in ``touched``, so persistence
    can journal just the changed rows (:meth:`take_touched`) instead of the whole table.
    """

    rec: np.ndarray
    names: list[str]
    touched: set[int] = field(default_factory=set, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    def append(self, rows: np.ndarray, names: list[str]) -> None:
        start = len(self.names)
        self.rec = np.concatenate([self.rec, rows.astype(np.int64)])
        self.names.extend(names)
        self.touched.update(range(start, len(self.names)))

    def set(self, i: int | np.ndarray, cols: int | slice, value: object) -> None:
        """Assign ``rec[i, cols] = value`` and note the row(s) as changed."""
        self.rec[i, cols] = value
        self.touched.update(np.atleast_1d(i).tolist())

    def rename(self, i: int, name: str) -> None:
        self.names[i] = name
        self.touched.add(i)

    def set_rows(self, n: int, rows: dict[int, tuple[list[int], str]]) -> None:
        """Grow the table to ``n`` rows (blank rows, no names) and replace whole ``rows``."""
        if n > len(self):
            self.append(np.zeros((n - len(self), self.rec.shape[1]), np.int64),
                        [""] * (n - len(self)))
        for i, (words, name) in rows.items():
            self.set(i, slice(None), words)
            self.rename(i, name)

    def take_touched(self) -> list[int]:
        """The rows changed since the last call, sorted; forgets them."""
        ids = sorted(self.touched)
        self.touched.clear()
        return ids

    def first_top(self, exclude: int = 0, limit: int | None = None) -> int:
        """The first top-level row (parent 0, no previous sibling) below ``limit``, else 0."""
        rec = self.rec[:limit]
        top = (rec[:, PARENT] == 0) & (rec[:, PREV] == 0)
        top[0] = False
        if exclude < len(top):
            top[exclude] = False
        hits = np.flatnonzero(top)
        return int(hits[0]) if hits.size else 0

    def last_child(self, parent: int, exclude: int = 0, limit: int | None = None) -> int:
        """The end of ``parent``'s child chain (the top level for 0) below ``limit``, else 0.

        Found in one vectorised pass (the row of that parent with no next sibling) rather
        than by walking the chain, so appending to a long flat list stays cheap.
        """
        rec = self.rec[:limit]
        ends = (rec[:, PARENT] == parent) & (rec[:, NEXT] == 0)
        ends[0] = False
        if exclude < len(ends):
            ends[exclude] = False
        hits = np.flatnonzero(ends)
        return int(hits[-1]) if hits.size else 0

    def append_top(self, ids: np.ndarray) -> None:
        """Chain new rows ``ids`` (consecutive, already appended) after the last top-level row."""
        last = self.last_child(0, limit=int(ids[0]))
        chain = np.concatenate([[last], ids, [0]])
        self.set(ids, PREV, chain[:-2])
        self.set(ids, NEXT, chain[2:])
        self.set(ids, PARENT, 0)
        if last:
            self.set(last, NEXT, ids[0])

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
            nxt = int(r[ref, NEXT])
            self.set(i, [PARENT, PREV, NEXT], [r[ref, PARENT], ref, nxt])
            if nxt:
                self.set(nxt, PREV, i)
            self.set(ref, NEXT, i)
            return
        parent = ref if as_child else 0
        last = self.last_child(parent, exclude=i)
        self.set(i, [PARENT, PREV, NEXT], [parent, last, 0])
        if last:
            self.set(last, NEXT, i)
        elif parent:
            self.set(parent, CHILD, i)

    def unlink(self, i: int) -> None:
        r = self.rec
        prev, nxt, parent = int(r[i, PREV]), int(r[i, NEXT]), int(r[i, PARENT])
        if prev:
            self.set(prev, NEXT, nxt)
        elif parent:
            self.set(parent, CHILD, nxt)
        if nxt:
            self.set(nxt, PREV, prev)
        self.set(i, [PARENT, PREV, NEXT], 0)

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
        rows[k, ANCHOR] = anchor_in(seg, sl, i)
    table.append(rows, [f"segment {i}" for i in ids])
    return table


def anchor_in(seg: np.ndarray, sl: tuple[slice, ...], i: int) -> list[int]:
    """A voxel (x, y, z) of segment ``i`` near the middle of its bounding box ``sl``."""
    zmid = (sl[0].start + sl[0].stop - 1) // 2
    ys, xs = np.nonzero(seg[zmid, sl[1], sl[2]] == i)
    if len(ys):
        k = len(ys) // 2
        return [int(xs[k]) + sl[2].start, int(ys[k]) + sl[1].start, zmid]
    z, y, x = np.argwhere(seg[sl] == i)[0]
    return [int(x) + sl[2].start, int(y) + sl[1].start, int(z) + sl[0].start]
