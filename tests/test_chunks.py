"""iter_chunks: tiling order, exact coverage, clipped margins, prefetch overlap, errors, close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from membrane_py.events import Cancelled, CancelToken
from membrane_py.geometry import Box
from membrane_py.volumes import ArrayVolume
from membrane_py.volumes.blocks import Chunk, count_chunks, iter_chunks

VOL = np.arange(5 * 40 * 50, dtype=np.uint32).reshape(5, 40, 50)


def read(box: Box) -> np.ndarray:
    return VOL[box.slices()].copy()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_order_coverage_and_margins(prefetch):
    region = Box(1, 5, 3, 37, 2, 50)
    chunk, margin = (2, 16, 20), (1, 4, 5)
    chunks = list(iter_chunks(read, region, VOL.shape, chunk, margin, prefetch=prefetch))
    assert len(chunks) == count_chunks(region, chunk) == 2 * 3 * 3
    starts = [(c.core.z0, c.core.y0, c.core.x0) for c in chunks]
    assert starts == sorted(starts)  # z outermost, then y, then x
    assert starts[:4] == [(1, 3, 2), (1, 3, 22), (1, 3, 42), (1, 19, 2)]
    seen = np.zeros(VOL.shape, np.int32)
    for c in chunks:
        seen[c.core.slices()] += 1
        expected = c.core.grow(*margin).clip(VOL.shape)
        assert c.outer == expected
        assert Box.full(VOL.shape).contains(c.outer) and c.outer.contains(c.core)
        np.testing.assert_array_equal(c.data, VOL[c.outer.slices()])
        np.testing.assert_array_equal(c.core_data(), VOL[c.core.slices()])
    inside = np.zeros(VOL.shape, bool)
    inside[region.slices()] = True
    assert (seen[inside] == 1).all() and (seen[~inside] == 0).all()


def test_margin_clipped_at_volume_edge():
    (c,) = iter_chunks(read, Box(0, 5, 0, 40, 0, 50), VOL.shape, (8, 64, 64), (2, 8, 8))
    assert c.outer == Box(0, 5, 0, 40, 0, 50) and c.core_in_outer == Box(0, 5, 0, 40, 0, 50)
    c2 = next(iter_chunks(read, Box(1, 2, 10, 20, 10, 20), VOL.shape, (1, 10, 10), (0, 3, 3)))
    assert c2.outer == Box(1, 2, 7, 23, 7, 23)
    assert c2.core_in_outer == Box(0, 1, 3, 13, 3, 13)


def test_works_with_a_volume_source_at_a_mip():
    vol = ArrayVolume(VOL.astype(np.uint8))
    shape = vol.shape_at(1)
    region = Box.full(shape)
    out = np.zeros(shape, np.uint8)
    for c in iter_chunks(lambda b: vol.read(b, 1), region, shape, (2, 8, 8), (0, 2, 2)):
        out[c.core.slices()] = c.core_data()
    np.testing.assert_array_equal(out, vol.read(region, 1))


def test_region_outside_bounds_rejected():
    with pytest.raises(IndexError, match="outside"):
        list(iter_chunks(read, Box(0, 6, 0, 1, 0, 1), VOL.shape))
    with pytest.raises(ValueError, match="positive"):
        count_chunks(Box(0, 1, 0, 1, 0, 1), (0, 1, 1))


def test_prefetch_overlaps_reading_and_processing():
    delay, n = 0.05, 8

    def slow_read(box: Box) -> np.ndarray:
        time.sleep(delay)
        return read(box)

    def run(prefetch: int) -> float:
        t0 = time.perf_counter()
        for _ in iter_chunks(slow_read, Box(0, 1, 0, 40, 0, 40), VOL.shape, (1, 10, 20),
                             (0, 0, 0), prefetch=prefetch):
            time.sleep(delay)  # "processing"
        return time.perf_counter() - t0

    serial, overlapped = run(0), run(2)
    assert serial >= 2 * n * delay * 0.95
    assert overlapped < 0.75 * serial


def test_reader_exception_reraises_in_consumer():
    def bad(box: Box) -> np.ndarray:
        if box.x0 >= 20:
            raise RuntimeError("disk on fire")
        return read(box)

    got: list[Chunk] = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        for c in iter_chunks(bad, Box(0, 1, 0, 10, 0, 40), VOL.shape, (1, 10, 10), (0, 0, 0)):
            got.append(c)
    assert len(got) == 2


def test_early_close_stops_reader_and_bounds_readahead():
    calls: list[Box] = []

    def counting(box: Box) -> np.ndarray:
        calls.append(box)
        return read(box)

    before = threading.active_count()
    gen = iter_chunks(counting, Box.full(VOL.shape), VOL.shape, (1, 10, 10), (0, 0, 0),
                      prefetch=2)
    next(gen)
    time.sleep(0.2)
    assert len(calls) <= 1 + 2 + 1  # the consumed one, the queue, one waiting to be queued
    gen.close()
    assert threading.active_count() == before
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n < count_chunks(Box.full(VOL.shape), (1, 10, 10))


def test_cancel_token():
    token = CancelToken()
    got = 0
    with pytest.raises(Cancelled):
        for _ in iter_chunks(read, Box.full(VOL.shape), VOL.shape, (1, 10, 10), (0, 0, 0),
                             cancel=token):
            got += 1
            if got == 3:
                token.cancel()
    assert got == 3
