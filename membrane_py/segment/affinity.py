"""3D neurons from affinities: watershed fragments, then hierarchical agglomeration.

An affinity map (C, z, y, x) gives for every voxel the probability that it belongs to the
same object as its neighbour one step back in z, y and x (see
:mod:`membrane_py.augment.affinities`). Segmentation happens in two steps, as in the
field's affinity pipelines:

1. **Fragments** (over-segmentation): the boundary map ``1 - mean affinity`` is flooded by
   a watershed from seeds placed at the centres of cells (maxima of the distance to the
   nearest boundary, :func:`watershed_fragments`), or by waterz's own affinity watershed.
2. **Agglomeration**: neighbouring fragments are merged in order of the *score* of the
   surface between them, lowest first, and the scores are updated after every merge
   (waterz). The score is ``1 - mean affinity`` over the surface (``scoring="mean"``) or
   ``1 - a quantile`` of it. Merging stops at :attr:`AgglomerationKnobs.threshold`.

The one knob, ``threshold`` in [0, 1]: two touching regions are merged while the boundary
between them scores below it, i.e. while their mean affinity across the contact is above
``1 - threshold``. Low values merge only across clearly open contacts (more splits, fewer
merges); high values also merge across weak boundaries (fewer splits, more merges).
Because a merge a proofreader must undo costs more than a split they must join, err low.

:func:`boundary_affinities` derives affinities from a membrane probability map, so a plain
membrane network's output can go through the same agglomeration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from membrane_py.augment.affinities import NEAREST, check_offsets
from membrane_py.events import CancelToken, check_cancel

SCORINGS = ("mean", "quantile")
FRAGMENTERS = ("distance", "zwatershed")
#: the quantiles waterz ships compiled; others would need a C++ compiler and boost headers
QUANTILES = (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95)


@dataclass
class AgglomerationKnobs:
    """Settings of :func:`segment_affinities` (see the module docstring for the method).

    ``threshold`` is the one knob to expose (a slider from 0 to 1): fragments merge while
    the boundary between them scores below it. ``scoring``: ``mean`` (1 - mean affinity of
    the contact surface) or ``quantile`` (1 - the ``quantile``-th percentile of it; low
    percentiles let a few closed voxels keep objects apart). ``fragmenter``: ``distance``
    (seeded watershed, :func:`watershed_fragments`: seeds where the distance to the nearest
    boundary voxel peaks at ``seed_distance`` or more; a boundary voxel has an affinity
    below ``boundary``) or ``zwatershed`` (waterz's own).
    ``sections``: seed per section (anisotropic serial sections) instead of in 3D.
    ``min_size``: objects with fewer voxels become 0.
    """

    threshold: float = 0.5
    scoring: str = "mean"
    quantile: int = 50
    fragmenter: str = "distance"
    boundary: float = 0.5
    seed_distance: float = 2.0
    sections: bool = False
    min_size: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.quantile not in QUANTILES:
            raise ValueError(f"quantile must be one of {QUANTILES}, got {self.quantile}")
        if self.fragmenter not in FRAGMENTERS:
            raise ValueError(f"fragmenter must be one of {FRAGMENTERS}, got {self.fragmenter!r}")
        if not 0.0 < self.boundary < 1.0 or self.seed_distance < 0 or self.min_size < 0:
            raise ValueError("need 0 < boundary < 1, seed_distance >= 0 and min_size >= 0")

    @property
    def scoring_function(self) -> str:
        """The waterz scoring function (a C++ type string; both forms ship compiled)."""
        if self.scoring == "mean":
            return "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
        return (f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {self.quantile}, "
                "ScoreValue, 256, false>>")


def boundary_affinities(prob: np.ndarray,
                        offsets: Sequence[Sequence[int]] = NEAREST) -> np.ndarray:
    """Affinities (float32 (C, z, y, x)) implied by a membrane probability volume: two
    neighbours are as connected as the more membrane-like of them allows,
    ``1 - max(p[v], p[v - d])``; without a neighbour, ``1 - p[v]``."""
    if prob.ndim != 3:
        raise ValueError(f"expected a (z, y, x) probability volume, got shape {prob.shape}")
    offs = check_offsets(offsets)
    p = prob.astype(np.float32, copy=False)
    out = np.empty((len(offs), *p.shape), np.float32)
    for c, (dz, dy, dx) in enumerate(offs):
        out[c] = 1.0 - p
        there = p[:p.shape[0] - dz, :p.shape[1] - dy, :p.shape[2] - dx]
        np.minimum(out[c, dz:, dy:, dx:], 1.0 - there, out=out[c, dz:, dy:, dx:])
    return out


def _check_affinities(affs: np.ndarray) -> np.ndarray:
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise ValueError(f"expected affinities (C >= 3, z, y, x) with z, y, x neighbours "
                         f"first, got shape {affs.shape}")
    return np.ascontiguousarray(affs[:3], dtype=np.float32)


def voxel_affinity(affs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and minimum affinity (float32 (z, y, x) each) of every voxel to its six nearest
    neighbours.

    Channel ``c`` at ``v`` stores the edge to ``v - d``; the edge to ``v + d`` is stored at
    ``v + d``. Using both keeps a boundary symmetric (both voxels beside a face see it),
    where the stored channels alone would mark only the voxel after the face. At the
    volume's far faces the missing edge is replaced by the one stored at ``v``.
    """
    affs = _check_affinities(affs)
    total = affs.sum(axis=0)
    low = affs.min(axis=0)
    for c, (dz, dy, dx) in enumerate(NEAREST):
        nxt = affs[c].copy()
        nxt[:nxt.shape[0] - dz, :nxt.shape[1] - dy, :nxt.shape[2] - dx] = affs[c, dz:, dy:, dx:]
        total += nxt
        np.minimum(low, nxt, out=low)
    return total / 6.0, low


def watershed_fragments(affs: np.ndarray, boundary: float = 0.5, seed_distance: float = 2.0,
              sections: bool = False) -> np.ndarray:
    """Over-segmentation of an affinity volume by a seeded watershed (uint64 (z, y, x)).

    The boundary map is ``1 - mean`` of the six nearest-neighbour affinities of each voxel
    (:func:`voxel_affinity`). Voxels whose six affinities are all at least ``boundary`` are
    inside cells (so two cells that touch without a boundary voxel still part); their
    distance to the nearest boundary voxel (``edt``) peaks at cell centres, and
    each peak plateau at least
    ``seed_distance`` from a boundary seeds one fragment. The watershed then floods the
    boundary map from the seeds, so every voxel belongs to a fragment. ``sections`` seeds
    each section in 2D (serial sections whose z step is much larger than the pixel).
    """
    import cc3d
    import edt
    from skimage.segmentation import watershed

    mean, low = voxel_affinity(affs)
    level = 1.0 - mean
    inside = low >= boundary
    if sections:
        dist = np.stack([edt.edt(s, parallel=1) for s in inside])
        size = (1, 5, 5)
    else:
        dist = edt.edt(inside, parallel=1)
        size = (5, 5, 5)
    peaks = (dist == ndi.maximum_filter(dist, size=size)) & (dist >= max(seed_distance, 1e-6))
    seeds = cc3d.connected_components(peaks, connectivity=26 if not sections else 6)
    return watershed(level, seeds).astype(np.uint64)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence what waterz prints (its Python part to ``sys.stdout``, its C++ core to file
    descriptor 1): it would corrupt a command's JSON output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null, redirect_stdout(null):
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def agglomerate_affinities(affs: np.ndarray, thresholds: Sequence[float],
                           knobs: AgglomerationKnobs | None = None,
                           fragments: np.ndarray | None = None,
                           cancel: CancelToken | None = None) -> Iterator[np.ndarray]:
    """Segmentations of an affinity volume at several merge thresholds (ascending), from one
    fragment pass and one merge hierarchy: each yield is uint32 (z, y, x) ids 1..n, objects
    smaller than ``knobs.min_size`` set to 0. ``knobs.threshold`` is ignored here (this is
    the sweep behind a threshold slider); :func:`segment_affinities` takes one threshold.
    ``fragments`` (integer (z, y, x), 0 = none) replaces the knobs' fragmenter."""
    import waterz

    knobs = knobs or AgglomerationKnobs()
    affs = _check_affinities(affs)
    thresholds = [float(t) for t in thresholds]
    if thresholds != sorted(thresholds) or not all(0 <= t <= 1 for t in thresholds):
        raise ValueError(f"thresholds must ascend within [0, 1], got {thresholds}")
    if fragments is not None:
        if fragments.shape != affs.shape[1:]:
            raise ValueError(f"fragments {fragments.shape} and affinities {affs.shape[1:]} "
                             "cover different volumes")
        frags = np.array(fragments, dtype=np.uint64, order="C")  # waterz writes into it
    elif knobs.fragmenter == "distance":
        frags = watershed_fragments(affs, knobs.boundary, knobs.seed_distance, knobs.sections)
    else:
        frags = None
    runs = waterz.agglomerate(affs, thresholds, fragments=frags,
                              scoring_function=knobs.scoring_function)
    while True:
        check_cancel(cancel)
        with _quiet_stdout():
            seg = next(runs, None)
        if seg is None:
            return
        yield relabel(seg, knobs.min_size)


def relabel(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Consecutive ids 1..n (uint32), objects under ``min_size`` voxels
    set to 0 first (``fastremap``, which measured faster than ``np.unique`` here; see
    bench/neurons3d.py)."""
    import fastremap

    labels = np.asarray(labels)
    if min_size > 1:
        ids, counts = fastremap.unique(labels, return_counts=True)
        small = ids[(counts < min_size) & (ids != 0)]
        if small.size:
            labels = fastremap.mask(labels, small)
    out, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    return out.astype(np.uint32, copy=False)


def segment_affinities(affs: np.ndarray, knobs: AgglomerationKnobs | None = None,
                       cancel: CancelToken | None = None) -> np.ndarray:
    """3D instance ids (uint32 (z, y, x), 0 = removed small objects) of an affinity volume:
    fragments merged up to ``knobs.threshold`` (see the module docstring)."""
    knobs = knobs or AgglomerationKnobs()
    check_cancel(cancel)
    return next(iter(agglomerate_affinities(affs, [knobs.threshold], knobs, cancel=cancel)))
