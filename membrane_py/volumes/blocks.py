"""Blocks: the units that block-wise jobs (prediction, and Dask on top of it) plan, read,
process and check as done.

A :class:`TilePlan` lists the output tiles a job writes (merged z runs per tile column, so
overlapping regions never compute a tile twice); :meth:`TilePlan.chunks` groups them into
:class:`Block` s on a global grid (z blocks outermost); :meth:`Block.done` is the
done-check a rerun uses to skip finished work.

Reading: cores tile a region chunk by chunk, each read with a margin while the next one loads.

Cores tile the region on a grid anchored at its start (z outermost, then y, then x); each
core is read grown by a margin and clipped to the volume, so a network sees context at
chunk borders. A background thread keeps up to ``prefetch`` chunks in a bounded queue:
while the caller processes one chunk the next is already on the wire, and memory stays
bounded. Works with any reader ``read(box) -> array``: ``lambda b: vol.read(b, mip)`` or
``lambda b: client.get_em_image(layer, b, mip)``.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from membrane_py.events import CancelToken
from membrane_py.geometry import Box, size_at_mip

TileKey = tuple[int, int, int]  # (z, row, col) at the plan's mip


@dataclass(frozen=True)
class Block:
    """One unit of work: a tile-aligned ``core`` box (read with context around it) and
    the planned tiles inside it. ``z_block`` is ``core.z0 // chunk z``."""

    z_block: int
    core: Box
    tiles: tuple[TileKey, ...]

    def done(self, tile_done: Callable[[TileKey], bool]) -> bool:
        """The done-check: every planned tile of the block is finished per ``tile_done``."""
        return all(tile_done(k) for k in self.tiles)


@dataclass(frozen=True, eq=False)
class TilePlan:
    """The tiles to predict at ``mip``: merged z runs (half-open) per tile column."""

    mip: int
    shape: tuple[int, int, int]  # volume size at ``mip``
    tile: int
    columns: dict[tuple[int, int], tuple[tuple[int, int], ...]]

    @property
    def n_tiles(self) -> int:
        return sum(z1 - z0 for runs in self.columns.values() for z0, z1 in runs)

    def tiles(self, z0: int = 0, z1: int | None = None) -> list[TileKey]:
        """The planned tiles with z in [z0, z1), sorted (z, row, col)."""
        z1 = self.shape[0] if z1 is None else z1
        return sorted((z, r, c) for (r, c), runs in self.columns.items() for a, b in runs
                      for z in range(max(a, z0), min(b, z1)))

    def sections(self) -> list[int]:
        """Every section that holds at least one planned tile."""
        return sorted({z for runs in self.columns.values() for a, b in runs
                       for z in range(a, b)})

    def blocks(self, chunk_z: int) -> list[int]:
        """The z blocks (``z // chunk_z``) that hold planned tiles, in order."""
        return sorted({k for runs in self.columns.values() for a, b in runs
                       for k in range(a // chunk_z, (b - 1) // chunk_z + 1)})

    def chunks(self, chunk: tuple[int, int, int]) -> Iterator[Block]:
        """Chunk reads on the global grid of ``chunk`` (z, y, x): z blocks outermost, then
        rows, then columns; each core is the bounding box of its planned tiles."""
        cz, cy, cx = chunk
        gy, gx = max(1, cy // self.tile), max(1, cx // self.tile)
        cells: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for r, c in self.columns:
            cells[(r // gy, c // gx)].append((r, c))
        _, h, w = self.shape
        t = self.tile
        for k in self.blocks(cz):
            lo, hi = k * cz, (k + 1) * cz
            for cell in sorted(cells):
                tiles = sorted((z, r, c) for r, c in cells[cell] for a, b in self.columns[(r, c)]
                               for z in range(max(a, lo), min(b, hi)))
                if not tiles:
                    continue
                zs = [z for z, _, _ in tiles]
                rs = [r for _, r, _ in tiles]
                cs = [c for _, _, c in tiles]
                core = Box(min(zs), max(zs) + 1, min(rs) * t, min((max(rs) + 1) * t, h),
                           min(cs) * t, min((max(cs) + 1) * t, w))
                yield Block(k, core, tuple(tiles))


def _merge(runs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Union of half-open intervals, sorted and with touching ones joined."""
    out: list[list[int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def plan_tiles(boxes: Iterable[Box], shape0: tuple[int, int, int], mip: int,
               tile: int = 1024) -> TilePlan:
    """Tiles at ``mip`` that cover the mip-0 ``boxes`` (clipped to the volume), merged."""
    shape = size_at_mip(shape0, mip)
    if min(shape) < 1:
        raise ValueError(f"the volume {shape0} (z, y, x) is empty at mip {mip}; "
                         "choose a lower mip")
    full = Box.full(shape)
    found: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for box0 in boxes:
        box = box0.to_mip(mip).intersect(full)
        if box.empty:
            continue
        for r in range(box.y0 // tile, math.ceil(box.y1 / tile)):
            for c in range(box.x0 // tile, math.ceil(box.x1 / tile)):
                found[(r, c)].append((box.z0, box.z1))
    if not found:
        raise ValueError(f"the region lies outside the volume (mip-0 size x={shape0[2]}, "
                         f"y={shape0[1]}, z={shape0[0]}); nothing to predict")
    return TilePlan(mip, shape, tile, {k: _merge(v) for k, v in sorted(found.items())})




@dataclass
class Chunk:
    """``data`` holds the voxels of ``outer`` (core plus clipped margin)."""

    core: Box
    outer: Box
    data: np.ndarray

    @property
    def core_in_outer(self) -> Box:
        """The core in the coordinates of ``data``."""
        return self.core.relative_to(self.outer)

    def core_data(self) -> np.ndarray:
        """The voxels of the core only (a view into ``data``)."""
        return self.data[self.core_in_outer.slices()]


def _check_chunk(chunk: tuple[int, int, int]) -> None:
    if len(chunk) != 3 or min(chunk) <= 0:
        raise ValueError(f"chunk size must be three positive numbers (z, y, x), got {chunk}")


def chunk_cores(region: Box, chunk: tuple[int, int, int]) -> Iterator[Box]:
    """Core boxes tiling ``region``, z outermost, then y, then x; edge cores are smaller."""
    _check_chunk(chunk)
    cz, cy, cx = chunk
    for z, y, x in itertools.product(range(region.z0, region.z1, cz),
                                     range(region.y0, region.y1, cy),
                                     range(region.x0, region.x1, cx)):
        yield Box(z, min(z + cz, region.z1), y, min(y + cy, region.y1), x, min(x + cx, region.x1))


def count_chunks(region: Box, chunk: tuple[int, int, int]) -> int:
    """How many cores :func:`iter_chunks` yields for ``region``."""
    _check_chunk(chunk)
    n = 1
    for size, step in zip(region.shape, chunk, strict=True):
        n *= -(-size // step)
    return n


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def iter_chunks(
    read: Callable[[Box], np.ndarray],
    region: Box,
    bounds: tuple[int, int, int],
    chunk: tuple[int, int, int] = (16, 1024, 1024),
    margin: tuple[int, int, int] = (0, 64, 64),
    prefetch: int = 2,
    cancel: CancelToken | None = None,
) -> Iterator[Chunk]:
    """Yield :class:`Chunk` s covering ``region`` (coordinates at the reader's mip).

    ``bounds`` is the (z, y, x) volume size at that mip; margins are clipped to it.
    ``prefetch`` = 0 reads in the caller's thread. Reader exceptions re-raise here;
    closing the generator early stops the reader thread; ``cancel`` raises Cancelled.
    """
    full = Box.full(tuple(bounds))
    if not full.contains(region):
        raise IndexError(f"region {region} lies outside the volume {tuple(bounds)}")
    return read_chunks(read, chunk_cores(region, chunk), bounds, margin, prefetch, cancel)


def read_chunks(
    read: Callable[[Box], np.ndarray],
    cores: Iterable[Box],
    bounds: tuple[int, int, int],
    margin: tuple[int, int, int] = (0, 64, 64),
    prefetch: int = 2,
    cancel: CancelToken | None = None,
) -> Iterator[Chunk]:
    """As :func:`iter_chunks`, for any sequence of core boxes inside the volume.

    ``cores`` is consumed lazily in the reader thread, so it may be a generator that
    decides on the fly which chunks still need reading.
    """
    full = Box.full(tuple(bounds))

    def outer_boxes() -> Iterator[tuple[Box, Box]]:
        for core in cores:
            if not full.contains(core):
                raise IndexError(f"chunk {core} lies outside the volume {full.shape}")
            yield core, core.grow(*margin).clip(full.shape)

    boxes = outer_boxes()
    if prefetch <= 0:
        for core, outer in boxes:
            if cancel is not None:
                cancel.check()
            yield Chunk(core, outer, read(outer))
        return

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Put unless the consumer has gone; returns False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for core, outer in boxes:
                if stop.is_set() or (cancel is not None and cancel.cancelled):
                    break
                if not put(Chunk(core, outer, read(outer))):
                    return
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(_Failure(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=worker, name="iter_chunks-reader", daemon=True)
    thread.start()
    try:
        while True:
            if cancel is not None:
                cancel.check()
            try:
                item = q.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _DONE:
                if cancel is not None:
                    cancel.check()
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)
