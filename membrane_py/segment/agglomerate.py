"""3D neuron ids from 2D segments (overlap linking) or from a 3D watershed.

Linking: a 2D segment in section z and one in section z+1 are the same object when they
overlap in at least ``min_overlap_px`` pixels *and* the overlap covers at least
``min_overlap_fraction`` of the smaller of the two. Relating the overlap to the smaller
segment lets a neurite that splits or joins between sections stay one object, while the
thin contact between neighbouring cells (a few pixels of misalignment) does not link them.
Connected components of the links are the 3D objects.

The alternative, :func:`watershed_3d`, seeds and floods the probability volume in 3D with
the same h-minima recipe as the 2D segmentation; it suits isotropic data (FIB-SEM) better
than serial sections, where z steps are several times the pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from membrane_py.events import CancelToken, Event, ProgressCallback, report
from membrane_py.segment.instances import InstanceConfig, _finish, _flood, _seeds, _smooth


@dataclass
class AgglomerationConfig:
    """Thresholds for linking 2D segments of neighbouring sections (see :func:`link_sections`).

    Invalid values raise ``ValueError``.
    """

    min_overlap_px: int = 20  # pixels two segments must share
    min_overlap_fraction: float = 0.5  # of the smaller segment's area

    def __post_init__(self) -> None:
        if self.min_overlap_px < 1:
            raise ValueError(f"min_overlap_px must be >= 1, got {self.min_overlap_px}")
        if not 0 < self.min_overlap_fraction <= 1:
            raise ValueError(f"min_overlap_fraction must lie in (0, 1], got "
                             f"{self.min_overlap_fraction}")


def link_sections(a: np.ndarray, b: np.ndarray,
                  cfg: AgglomerationConfig | None = None) -> np.ndarray:
    """Pairs of 2D segments in two neighbouring sections that belong to one 3D object.

    Segment ``i`` of ``a`` and ``j`` of ``b`` are linked when they share at least
    ``cfg.min_overlap_px`` pixels and that overlap is at least ``cfg.min_overlap_fraction``
    of the smaller of the two segments' areas. Measuring against the smaller segment lets a
    branch (one segment covering two in the next section, or two joining into one) link to
    both pieces, while a thin contact from misalignment between neighbouring cells does not.

    Parameters
    ----------
    a, b : ndarray (y, x) of integer ids, one shape
        Sections z and z + 1; 0 is background and never links.
    cfg : AgglomerationConfig, optional

    Returns
    -------
    pairs : ndarray (k, 2), int64
        Rows ``(id in a, id in b)``, sorted by the id in ``a``, then the id in ``b``; k may
        be 0. An id may appear in several rows (splits and joins).
    """
    cfg = cfg or AgglomerationConfig()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"link_sections takes two (y, x) sections of one shape, got "
                         f"{a.shape} and {b.shape}")
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    ua, ia = np.unique(a[both], return_inverse=True)
    ub, ib = np.unique(b[both], return_inverse=True)
    keys, overlap = np.unique(ia.astype(np.int64) * len(ub) + ib, return_counts=True)
    pa, pb = ua[keys // len(ub)].astype(np.int64), ub[keys % len(ub)].astype(np.int64)
    smaller = np.minimum(_sizes(a, pa), _sizes(b, pb))
    keep = (overlap >= cfg.min_overlap_px) & (overlap >= cfg.min_overlap_fraction * smaller)
    return np.stack([pa[keep], pb[keep]], axis=1)


def _sizes(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel counts of ``ids`` in ``labels``."""
    present, counts = np.unique(labels, return_counts=True)
    return counts[np.searchsorted(present, ids)]


def agglomerate(labels: np.ndarray, cfg: AgglomerationConfig | None = None,
                progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> np.ndarray:
    """3D objects from 2D segments: link overlapping segments of neighbouring sections.

    Links come from :func:`link_sections` for every pair of sections z, z + 1; the connected
    components of the links are the 3D objects, so a neurite that splits and rejoins stays
    one object. Sections are never linked across a gap (z to z + 2).

    Parameters
    ----------
    labels : ndarray (z, y, x) of integer ids
        2D segments whose ids are unique in the volume (as :func:`segment_stack` returns).
    cfg : AgglomerationConfig, optional
    progress : callable, optional
        Receives one :class:`membrane_py.events.Progress` per pair of sections.
    cancel : CancelToken, optional
        Checked before each pair; raises ``Cancelled`` when set.

    Returns
    -------
    objects : ndarray (z, y, x), uint32
        Ids 1..m, numbered in the order of each object's smallest 2D id; 0 stays 0.
    """
    cfg = cfg or AgglomerationConfig()
    if labels.ndim != 3:
        raise ValueError(f"expected (z, y, x) 2D segments, got shape {labels.shape}")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    links = []
    for z in range(labels.shape[0] - 1):
        if cancel is not None:
            cancel.check()
        links.append(link_sections(labels[z], labels[z + 1], cfg))
        report(progress, Event.progress("3D linking", z + 1, labels.shape[0] - 1))
    if ids.size == 0:
        return np.zeros(labels.shape, np.uint32)
    edges = np.searchsorted(ids, np.concatenate(links or [np.zeros((0, 2), np.int64)]))
    n = ids.size
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # number objects in the order of their first 2D segment, 1..m
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(1, first.size + 1)
    lut = np.zeros(int(ids[-1]) + 1, np.uint32)
    lut[ids] = rank[comp]
    return lut[labels]


def watershed_3d(prob: np.ndarray, cfg: InstanceConfig | None = None,
                 min_size: int = 500) -> np.ndarray:
    """3D instance segmentation of a membrane probability volume by one 3D watershed.

    The 3D counterpart of :func:`segment_section` for near-isotropic data (FIB-SEM), where
    cells are better separated in 3D than by linking sections. Seeds are the 3D h-minima
    (depth ``cfg.h``), the flood is 26-connected, voxels above ``cfg.membrane_threshold``
    become 0 and objects under ``min_size`` voxels are dropped. ``cfg.sigma`` smooths in 3D;
    the window settings do not apply (the volume is processed whole, so keep it small).

    Parameters
    ----------
    prob : ndarray (z, y, x)
        Membrane probability in [0, 1] (float), membrane bright.
    cfg : InstanceConfig, optional
    min_size : int
        Voxels; smaller objects become 0.

    Returns
    -------
    labels : ndarray (z, y, x), uint32
        Ids 1..n, 0 for membrane and removed voxels.
    """
    cfg = cfg or InstanceConfig()
    if prob.ndim != 3:
        raise ValueError(f"expected a (z, y, x) probability volume, got shape {prob.shape}")
    prob = _smooth(prob.astype(np.float32, copy=False), cfg.sigma)
    markers, _ = _seeds(prob, cfg.h)
    labels = _flood(prob, markers)
    return _finish(labels, prob, cfg.membrane_threshold, min_size)
