"""Walk a region chunk by chunk, reading each chunk with a margin, while the next one loads.

Cores tile the region on a grid anchored at its start (z outermost, then y, then x); each
core is read grown by a margin and clipped to the volume, so a network sees context at
chunk borders. A background thread keeps up to ``prefetch`` chunks in a bounded queue:
while the caller processes one chunk the next is already on the wire, and memory stays
bounded. Works with any reader ``read(box) -> array``: ``lambda b: vol.read(b, mip)`` or
``lambda b: client.get_em_image(layer, b, mip)``.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from membrane_py.geometry import Box
from membrane_py.progress import CancelToken


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
