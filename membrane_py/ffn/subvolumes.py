"""Flood filling of a large box in overlapping subvolumes, with id reconciliation.

The box is tiled into cores (:func:`membrane_py.volumes.blocks.chunk_cores`); each core is
grown by ``overlap`` voxels per side (and, at the box's edge, extended inwards to at least
one FOV) and segmented on its own, so canvas memory scales with the subvolume, not the box.
Subvolumes are processed in order; each new object is joined to the earlier object it
shares the most voxels with when they share at least ``min_overlap`` voxels (the same neurite
found again from the other side of a subvolume border), else it gets a new id. Voxels an
earlier subvolume already assigned keep their id.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.geometry import Box
from membrane_py.volumes.blocks import chunk_cores, count_chunks


def outer_box(core: Box, overlap: tuple[int, int, int], fov: tuple[int, int, int],
              full: Box) -> Box:
    """``core`` grown by ``overlap``, clipped to ``full`` and at least ``fov`` a side."""
    box = core.grow(*overlap).intersect(full)
    lo, hi = [box.z0, box.y0, box.x0], [box.z1, box.y1, box.x1]
    flo, fhi = (full.z0, full.y0, full.x0), (full.z1, full.y1, full.x1)
    for a in range(3):
        if hi[a] - lo[a] < fov[a]:
            lo[a] = max(flo[a], hi[a] - fov[a])
            hi[a] = min(fhi[a], lo[a] + fov[a])
    return Box(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


def reconcile(out: np.ndarray, new: np.ndarray, next_id: int, min_overlap: int) -> int:
    """Write ``new`` (ids of one subvolume) into ``out`` (the same voxels, global ids) where
    ``out`` is 0, joining objects as the module says; returns the next free global id."""
    ids = np.unique(new[new > 0])
    mapping = np.zeros(int(new.max(initial=0)) + 1, np.uint32)
    for k in ids:
        here = out[new == k]
        here = here[here > 0]
        if here.size >= min_overlap:
            values, counts = np.unique(here, return_counts=True)
            if counts.max() >= min_overlap:
                mapping[k] = values[np.argmax(counts)]
                continue
        mapping[k] = next_id
        next_id += 1
    free = (out == 0) & (new > 0)
    out[free] = mapping[new[free]]
    return next_id


def segment_in_subvolumes(shape: tuple[int, int, int], segment: Callable[[Box], np.ndarray],
                          core: tuple[int, int, int], overlap: tuple[int, int, int],
                          fov: tuple[int, int, int], min_overlap: int = 100,
                          progress: ProgressCallback | None = None,
                          cancel: CancelToken | None = None) -> np.ndarray:
    """Global uint32 ids for a volume of ``shape``; ``segment(box)`` segments one subvolume
    (box in the volume's coordinates) and returns its ids."""
    full = Box.full(shape)
    out = np.zeros(shape, np.uint32)
    next_id = 1
    total = count_chunks(full, core)
    for i, c in enumerate(chunk_cores(full, core), 1):
        check_cancel(cancel)
        box = outer_box(c, overlap, fov, full)
        next_id = reconcile(out[box.slices()], segment(box), next_id, min_overlap)
        report(progress, Event.progress("ffn-subvolumes", i, total,
                                        f"{next_id - 1} objects so far"))
    return out
