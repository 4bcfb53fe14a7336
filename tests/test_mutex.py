"""Mutex watershed (mwatershed) on affinities of a known label volume."""

import numpy as np
import pytest

from membrane_py.augment.affinities import affinities
from membrane_py.segment import mutex_watershed

OFFSETS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 3, 0), (0, 0, 3)]


def _three_cells() -> np.ndarray:
    labels = np.zeros((6, 12, 12), np.int64)
    labels[:, :, :6], labels[:, :, 6:], labels[:, :4, :] = 1, 2, 3
    return labels


def test_mutex_watershed_recovers_noisy_cells_with_long_range_edges():
    labels = _three_cells()
    a = affinities(labels, OFFSETS).astype(np.float32)
    a[a == 255] = 0.5  # unknown: neither attract nor repel
    a = np.clip(a + np.random.default_rng(0).normal(0, 0.2, a.shape), 0, 1)
    seg = mutex_watershed(a, OFFSETS, bias=0.5, min_size=0)
    # one id per cell and one cell per id
    for k in (1, 2, 3):
        assert len(np.unique(seg[labels == k])) == 1
    assert len(np.unique(seg)) == 3 and seg.dtype == np.uint32


def test_mutex_watershed_bias_splits_a_weak_contact():
    labels = _three_cells()
    a = affinities(labels, OFFSETS).astype(np.float32)
    a[a == 255] = 0.5
    # cells 1 and 2 touch across x = 5 | 6 with affinity 0.6 instead of 0
    a[2][:, 4:, 6] = 0.6
    a[4][:, 4:, 6:9] = 0.6
    merged = mutex_watershed(a, OFFSETS, bias=0.4, min_size=0)
    split = mutex_watershed(a, OFFSETS, bias=0.7, min_size=0)
    assert len(np.unique(merged)) == 2 and len(np.unique(split)) == 3


def test_mutex_watershed_checks_its_inputs():
    a = np.zeros((3, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="one channel per offset"):
        mutex_watershed(a, OFFSETS)
    with pytest.raises(ValueError, match="bias"):
        mutex_watershed(a, OFFSETS[:3], bias=1.5)
