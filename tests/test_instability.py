"""The instability map marks where cells join or split with the threshold, not blurry edges."""

from __future__ import annotations

import numpy as np
import pytest

from membrane_py.infer.engine import binary_entropy
from membrane_py.segment.instability import instability


def two_cells(gap: float, edge: float = 0.05) -> np.ndarray:
    """A 64x64 map: two cells left and right of a membrane at x = 30..33 (p 0.95), with
    blurred flanks of probability ``edge`` at x = 28, 29, 34, 35, and rows 20..27 of the
    membrane at probability ``gap``."""
    p = np.full((64, 64), 0.05, np.float32)
    p[:, 28:30] = p[:, 34:36] = edge
    p[:, 30:34] = 0.95
    p[20:28, 30:34] = gap
    return p


def test_a_faint_gap_is_marked_and_nothing_else():
    u = instability(two_cells(gap=0.5))
    ys, xs = np.nonzero(u)
    assert len(ys) and set(ys) <= set(range(20, 28)) and set(xs) <= set(range(30, 34))


def test_sure_maps_and_blurred_but_closed_membranes_are_stable():
    assert not instability(two_cells(gap=0.95)).any()
    blurred = two_cells(gap=0.95, edge=0.5)
    assert not instability(blurred).any()
    assert binary_entropy(blurred).mean() > 0.05  # entropy is high there all the same


def test_a_segment_only_the_lenient_cut_has_is_marked():
    p = np.full((40, 40), 0.95, np.float32)
    p[2:10, 2:10] = 0.05  # a clear cell
    p[20:30, 20:30] = 0.5  # a cell only a lenient threshold sees
    u = instability(p)
    assert u[20:30, 20:30].all() and u.sum() == 100


def test_specks_do_not_split_cells():
    p = two_cells(gap=0.95)
    p[4:8, 4:8] = 0.5  # a faint ring around a 4 px speck inside the left cell
    p[5:7, 5:7] = 0.01
    assert not instability(p, min_area=16).any()
    assert instability(p, min_area=1)[4:8, 4:8].any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="low < high"):
        instability(np.zeros((8, 8)), low=0.6, high=0.4)
    with pytest.raises(ValueError, match=r"\(y, x\)"):
        instability(np.zeros((2, 8, 8)))
