"""Mutex watershed on affinities (Wolf et al. 2018) through the ``mwatershed`` package.

Every affinity edge gets a signed weight ``affinity - bias``: positive edges attract (the
two voxels want one object), negative ones repel. All edges are visited once, strongest
first (by magnitude); an attractive edge merges its two clusters unless a repulsive edge
already processed forbids it (a *mutex* between them), a repulsive edge records such a
mutex. No fragments, no thresholds on region scores: the one knob is ``bias``. Long-range
offsets (e.g. (0, 9, 0)) give the repulsions that keep touching cells apart; with nearest
neighbours alone it is close to connected components of ``affinity > bias``.

``mwatershed`` (a Rust implementation with Python wheels on PyPI) stores at voxel ``v``
the edge to ``v + offset``; our affinities (:mod:`membrane_py.augment.affinities`) store
the edge to ``v - offset``, so the offsets are passed negated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from membrane_py.augment.affinities import check_offsets
from membrane_py.events import CancelToken, check_cancel
from membrane_py.segment.affinity import relabel


def mutex_watershed(affs: np.ndarray, offsets: Sequence[Sequence[int]], bias: float = 0.5,
                    long_range_stride: int = 1, min_size: int = 100,
                    cancel: CancelToken | None = None) -> np.ndarray:
    """Instance ids (uint32 (z, y, x), 1..n; objects under ``min_size`` voxels set to 0) of
    an affinity volume (C, z, y, x) with one channel per offset.

    ``bias`` in (0, 1): affinities above it attract, below it repel; higher values split
    more. ``long_range_stride`` > 1 keeps only every ``stride``-th edge of channels whose
    offset is longer than one step in each axis (long edges favour splits; fewer of them
    balance that and save time)."""
    import mwatershed

    offs = check_offsets(offsets)
    if affs.ndim != 4 or affs.shape[0] != len(offs):
        raise ValueError(f"affinities {affs.shape} need one channel per offset "
                         f"({len(offs)} offsets: {offs})")
    if not 0.0 < bias < 1.0 or long_range_stride < 1:
        raise ValueError(f"need 0 < bias < 1 and long_range_stride >= 1, got {bias}, "
                         f"{long_range_stride}")
    check_cancel(cancel)
    weights = affs.astype(np.float64) - bias
    strides = [[long_range_stride if max(d) > 1 else 1] * 3 for d in offs]
    ids = mwatershed.agglom(np.ascontiguousarray(weights), [[-v for v in d] for d in offs],
                            strides=strides)
    check_cancel(cancel)
    return relabel(ids, min_size)
