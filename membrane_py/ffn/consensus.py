"""Two flood fillings of one volume combined into one with fewer false merges.

Growing objects from the seeds in forward and then in reverse order gives two
segmentations whose merge errors mostly differ (an object that leaks into a neighbour in
one run usually does not in the other, since there the neighbour was grown first). The
*split* consensus keeps only what both agree on: every pair (id in ``a``, id in ``b``) of
overlapping objects becomes an object of its own. The largest pair of each ``a`` object
keeps that object's id, the other pairs get new ids; voxels that ``b`` left empty keep the
``a`` pair (``a`` is the primary run), voxels ``a`` left empty stay empty, and pieces
smaller than ``min_size`` voxels become background.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from membrane_py.ffn.canvas import FloodFiller


def split_consensus(a: np.ndarray, b: np.ndarray, min_size: int = 1000) -> np.ndarray:
    """The split consensus of segmentations ``a`` and ``b`` (same shape, 0 = background)
    as uint32 ids."""
    if a.shape != b.shape:
        raise ValueError(f"the two segmentations differ in shape: {a.shape} vs {b.shape}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    a64, b64 = a.astype(np.int64).ravel(), b.astype(np.int64).ravel()
    _, b_idx = np.unique(b64, return_inverse=True)
    fg = a64 > 0
    pairs, pair_idx, counts = np.unique(np.stack([a64[fg], b_idx.ravel()[fg]]), axis=1,
                                        return_inverse=True, return_counts=True)
    new = np.zeros(pairs.shape[1], np.int64)
    order = np.lexsort((-counts, pairs[0]))  # by a id, then largest pair first
    first = np.ones(order.size, bool)
    first[1:] = pairs[0, order[1:]] != pairs[0, order[:-1]]
    new[order[first]] = pairs[0, order[first]]
    rest = order[~first]
    next_id = int(a64.max(initial=0)) + 1
    new[rest] = np.arange(next_id, next_id + rest.size)
    new[counts < min_size] = 0
    out = np.zeros(a64.size, np.uint32)
    out[fg] = new[pair_idx.ravel()]
    return out.reshape(a.shape)


def forward_reverse(forward: FloodFiller, regrow: Callable[[np.ndarray], FloodFiller],
                    min_size: int = 1000) -> tuple[np.ndarray, dict]:
    """The reference's seed-order consensus: the objects of the finished ``forward`` run
    are grown again by ``regrow(seeds)`` (a fresh filler of the same volume) from their
    seeds in reverse id order, and the split consensus of the two is returned with the
    seed origins of the ids that survive."""
    origins = forward.origins
    seeds = np.array([origins[k] for k in sorted(origins, reverse=True)],
                     np.int64).reshape(-1, 3)
    reverse = regrow(seeds)
    labels = split_consensus(np.maximum(forward.segmentation, 0),
                             np.maximum(reverse.segmentation, 0), min_size)
    present = set(np.unique(labels).tolist())
    return labels, {k: v for k, v in origins.items() if k in present}
