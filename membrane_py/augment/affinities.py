"""Affinity targets: for each voxel and offset, are the voxel and its neighbour one object?

A membrane map says where boundaries are; an affinity map says, for every voxel ``v`` and
offset ``d`` (dz, dy, dx), whether ``v`` and ``v - d`` belong to the same object. A network
that predicts x, y *and* z affinities learns which boundaries close between sections,
which a 2D membrane map cannot express, and the agglomeration in
:mod:`membrane_py.segment.affinity` works on these maps directly.

Convention (that of waterz and most affinity tools): channel ``c`` at ``v`` links ``v`` to
``v - offsets[c]``. Instance id 0 is boundary/background: its affinity to anything is 0.
Where ``v - d`` lies outside the volume the value is unknown (:data:`IGNORE`), which a loss
skips.
:class:`membrane_py.augment.dataset.AffinityPatchDataset` turns them into training samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEAREST = ((1, 0, 0), (0, 1, 0), (0, 0, 1))  # z, y, x neighbours
IGNORE = 255  # target value for an unknown affinity (neighbour outside the volume)


def check_offsets(offsets: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Offsets as (dz, dy, dx) tuples; each must be non-zero with non-negative parts."""
    out = [tuple(int(v) for v in d) for d in offsets]
    if not out or any(len(d) != 3 or min(d) < 0 or max(d) == 0 for d in out):
        raise ValueError(f"affinity offsets must be non-zero (dz, dy, dx) triples of "
                         f"non-negative integers, got {list(offsets)}")
    return out  # type: ignore[return-value]


def affinities(labels: np.ndarray,
               offsets: Sequence[Sequence[int]] = NEAREST) -> np.ndarray:
    """Affinities of an instance volume: uint8 (C, z, y, x), 1 same object, 0 not,
    :data:`IGNORE` where the neighbour lies outside the volume.

    Parameters
    ----------
    labels : ndarray (z, y, x) of integer ids; 0 is boundary (affinity 0 to everything)
    offsets : sequence of (dz, dy, dx)
        Channel ``c`` at voxel ``v`` compares ``v`` with ``v - offsets[c]``; longer offsets
        (e.g. (0, 9, 0)) give long-range affinities.
    """
    if labels.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label volume, got shape {labels.shape}")
    offs = check_offsets(offsets)
    out = np.full((len(offs), *labels.shape), IGNORE, np.uint8)
    for c, (dz, dy, dx) in enumerate(offs):
        here = labels[dz:, dy:, dx:]
        there = labels[:labels.shape[0] - dz, :labels.shape[1] - dy, :labels.shape[2] - dx]
        out[c, dz:, dy:, dx:] = (here == there) & (here != 0)
    return out
