"""2D instance segmentation from membrane probabilities: h-minima seeds, watershed, cleanup.

The recipe follows mEMbrain's ``compute2dsegs`` (membrain.md 6.4): several prediction runs
are combined (default ``0.7 * max + 0.3 * min``), seeds are the h-minima of the membrane map
(h = 0.05 on the 0..1 scale, 8-connected), a watershed floods the map from them, pixels with
p > 0.71 become 0 and segments under 70 px are dropped. Probabilities are membrane-bright.

Large sections are processed in windows: each core tile of ``window`` px is segmented with
``halo`` px of context on every side, keeps its own labels inside its core, and the pieces
are joined across core borders where the two windows agree. The agreement test looks at a
strip of ``halo // 2`` px beyond a window's core, inside its neighbours' cores: a neighbour
piece is linked to the window label covering more than half of it there. Linked pieces get
one id (connected components of the links, so objects crossing corners or several windows
join too). Watershed ties are broken by a fixed hash of the *global* pixel position, so a
window floods exactly as the whole image would wherever its halo holds the relevant seeds;
the result then equals unwindowed processing up to the numbering (tests check this).
Size filtering and the final numbering run after stitching, on whole segments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from skimage.morphology import local_minima, reconstruction
from skimage.segmentation import relabel_sequential, watershed

from membrane_py.codes import MISSING, mix64, u8_to_probability
from membrane_py.events import CancelToken, Event, ProgressCallback, report

#: Largest id a uint32 label volume can hold.
MAX_ID = np.iinfo(np.uint32).max
_TIE_AMPLITUDE = 1e-5  # far below the 1/255 step of 8-bit maps, far above float64 resolution


@dataclass
class InstanceConfig:
    """Parameters of 2D instance segmentation (defaults as mEMbrain's compute2dsegs).

    Probabilities (``h``, ``membrane_threshold``) are on the 0..1 scale, sizes in pixels of
    the section at the mip it is processed at. Invalid values raise ``ValueError``.
    """

    h: float = 0.05  # h-minima depth on the 0..1 scale: larger = fewer, larger seeds
    membrane_threshold: float = 0.71  # pixels with p above become 0 (membrane)
    min_size: int = 70  # px; smaller segments become 0
    sigma: float = 0.0  # Gaussian smoothing of the map before seeding (0 = none)
    window: int = 2048  # core window side (px)
    halo: int = 256  # context on each side of a window (px)
    weights: tuple[float, float, float] = (0.7, 0.3, 0.0)  # combining runs: max, min, mean

    def __post_init__(self) -> None:
        self.weights = tuple(float(w) for w in self.weights)
        if not 0 < self.h < 1:
            raise ValueError(f"h must lie in (0, 1) on the probability scale, got {self.h}")
        if not 0 < self.membrane_threshold <= 1:
            raise ValueError(f"membrane_threshold must lie in (0, 1], got "
                             f"{self.membrane_threshold}")
        if self.min_size < 0 or self.sigma < 0:
            raise ValueError("min_size and sigma must be >= 0")
        if self.window < 16:
            raise ValueError(f"window must be at least 16 px, got {self.window}")
        if self.halo < 16:
            raise ValueError(f"halo must be at least 16 px so windows can be joined, got "
                             f"{self.halo}; use a window larger than the section instead")
        _check_weights(self.weights)


def _check_weights(weights: Sequence[float]) -> None:
    """Combination weights (max, min, mean): three non-negative numbers summing to 1."""
    if len(weights) != 3 or min(weights) < 0 or not math.isclose(sum(weights), 1, abs_tol=1e-6):
        raise ValueError(f"weights (max, min, mean) must be three numbers >= 0 summing to 1 "
                         f"(so thresholds keep their meaning), got {tuple(weights)}")


def to_probability(data: np.ndarray, invert: bool = False) -> np.ndarray:
    """Membrane probability in [0, 1] (float32, membrane = 1) from a stored prediction.

    Predictions arrive as 8-bit PNG tiles, 16-bit images or float arrays; every algorithm
    in this package works on one scale, so they are converted here first.

    Parameters
    ----------
    data : ndarray, uint8, uint16 or float, any 2D/3D shape such as (y, x) or (z, y, x)
        uint8: the tile code 1 + round(254 p) (:mod:`membrane_py.codes`), 0 = missing;
        uint16: probability * 65535; float: probability in [0, 1] (NaN = missing).
    invert : bool
        True for maps where membrane is dark (high values mean cell interior).

    Returns
    -------
    prob : ndarray, float32, same shape as ``data``
        uint8 ``v`` gives ``(v - 1) / 254``, uint16 ``v / 65535``, float values are kept; with
        ``invert`` the result is ``1 - p``. Missing pixels (uint8 0, float NaN) become 1
        (membrane) in either case, as mEMbrain fills missing tiles with 255, so no segment
        grows across a gap in the prediction.

    Raises
    ------
    ValueError
        For RGB (4D) arrays, other dtypes, or float values outside [0, 1].
    """
    if data.ndim == 4:
        raise ValueError(f"expected a grayscale probability map, got an RGB array {data.shape}; "
                         "pass the probability tiles of one class")
    if data.dtype == np.uint8:
        prob = u8_to_probability(data, missing=1.0)
        missing = data == MISSING
    elif data.dtype == np.uint16:
        prob = data.astype(np.float32) / 65535
        missing = None
    elif np.issubdtype(data.dtype, np.floating):
        prob = data.astype(np.float32)
        missing = np.isnan(prob)
        known = prob[~missing]
        if known.size and (known.min() < -1e-3 or known.max() > 1 + 1e-3):
            raise ValueError(f"float probabilities must lie in [0, 1], got "
                             f"{known.min():.3g}..{known.max():.3g}")
        prob = np.clip(np.nan_to_num(prob, nan=1.0), 0, 1)
    else:
        raise ValueError(f"probability maps must be uint8, uint16 or float, got {data.dtype}")
    if invert:
        prob = 1 - prob
    if missing is not None:
        prob[missing] = 1.0  # after inverting: a missing pixel is membrane on either scale
    return prob


def combine_predictions(probs: Sequence[np.ndarray],
                        weights: Sequence[float] = (0.7, 0.3, 0.0)) -> np.ndarray:
    """One membrane map from several prediction runs, pixel by pixel.

    Different networks (or test-time augmentations) miss different membranes. The maximum
    keeps a membrane any run saw (fewer merges), the minimum and mean damp one run's noise
    (fewer splits); mEMbrain's default mixes them as ``0.7 * max + 0.3 * min``.

    Parameters
    ----------
    probs : sequence of ndarray, all of one shape
        Membrane probabilities in [0, 1] (see :func:`to_probability`).
    weights : (w_max, w_min, w_mean)
        Non-negative and summing to 1, so the result stays in [0, 1] and thresholds such
        as ``InstanceConfig.membrane_threshold`` keep their meaning.

    Returns
    -------
    prob : ndarray, float32, the shape of each input
        ``w_max * max + w_min * min + w_mean * mean`` over the runs; one run is returned
        as it is (cast to float32).
    """
    if not probs:
        raise ValueError("no probability maps to combine")
    _check_weights(weights)
    shapes = {p.shape for p in probs}
    if len(shapes) > 1:
        raise ValueError(f"probability maps differ in shape: {sorted(shapes)}")
    if len(probs) == 1:
        return probs[0].astype(np.float32, copy=False)
    stack = np.stack([p.astype(np.float32, copy=False) for p in probs])
    w_max, w_min, w_mean = weights
    return (w_max * stack.max(0) + w_min * stack.min(0) + w_mean * stack.mean(0)).astype(
        np.float32)


def _tie_breaker(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Tiny float64 offsets that depend only on global pixel position (y, x).

    Added to the map before flooding, they make every value distinct, so the watershed
    never depends on where a window starts.
    """
    yy = np.arange(y0, y1, dtype=np.uint64)[:, None] << np.uint64(32)
    xx = np.arange(x0, x1, dtype=np.uint64)[None, :]
    u = (mix64(yy | xx) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u * _TIE_AMPLITUDE


def _seeds(prob: np.ndarray, h: float) -> tuple[np.ndarray, int]:
    """Seed labels (int32) and count: the regional minima of the h-minima transform of a 2D
    or 3D map (fully connected), as MATLAB's ``imregionalmin(imhmin(p, h))``.

    Minima shallower than ``h`` merge with their neighbours, and a flat plateau is one seed
    even where noise dips split it (scikit-image's ``h_minima`` would return the dips).
    A map without any minimum (constant) is one basin, so one seed.
    """
    f = prob.astype(np.float64)
    filled = reconstruction(f + h, f, method="erosion")
    minima = local_minima(filled, connectivity=prob.ndim, allow_borders=True)
    labels, n = ndi.label(minima, np.ones((3,) * prob.ndim, bool))
    if n == 0:
        return np.ones(prob.shape, np.int32), 1
    return labels.astype(np.int32, copy=False), int(n)


def _flood(prob: np.ndarray, markers: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
    """Watershed of the map from markers over every pixel (full connectivity)."""
    image = prob.astype(np.float64) if tie is None else prob + tie
    return watershed(image, markers, connectivity=prob.ndim)


def _smooth(prob: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing within sections (2D) or in 3D; sigma 0 returns the map unchanged."""
    return prob if sigma <= 0 else ndi.gaussian_filter(prob, sigma, mode="nearest")


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop small segments: every id covering fewer than ``min_size`` pixels becomes 0.

    Sizes count all pixels carrying an id anywhere in ``labels`` (not connected pieces),
    so a segment is kept or dropped as a whole. Tiny watershed basins are usually noise.

    Parameters
    ----------
    labels : ndarray of integer ids, any shape; 0 is background and is never counted
        Modified in place.
    min_size : int
        Pixels (voxels in 3D); ids with exactly ``min_size`` pixels stay. 0 or 1 keeps all.

    Returns
    -------
    labels : the same array, for chaining.
    """
    if min_size > 1 and labels.any():
        ids, counts = np.unique(labels, return_counts=True)
        small = ids[(counts < min_size) & (ids != 0)]
        if small.size:
            labels[np.isin(labels, small)] = 0
    return labels


def _finish(labels: np.ndarray, prob: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    """Cleanup shared by 2D and 3D: pixels above ``threshold`` to 0, segments under
    ``min_size`` dropped, ids renumbered 1..n (uint32) in the order of the input ids."""
    labels[prob > threshold] = 0
    remove_small(labels, min_size)
    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


def grow_into_membranes(labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Grow segments over the 0 (membrane or removed) pixels of each section.

    Each section is flooded from its segments over the membrane map, so every 0 pixel
    joins the segment whose basin reaches it first and the segments tile the section: the
    form that ISBI-style scores (adapted Rand, VI) expect, used by the benchmarks.

    Parameters
    ----------
    labels : ndarray (z, y, x) of integer ids, 0 = unassigned
    prob : ndarray (z, y, x), membrane probability in [0, 1]

    Returns
    -------
    grown : ndarray of ``labels``' dtype, (z, y, x)
        Non-zero ids are unchanged; 0 pixels take a neighbouring id. A section without any
        segment stays all 0. ``labels`` is not modified.
    """
    out = labels.copy()
    for z in range(labels.shape[0]):
        if labels[z].any():
            out[z] = _flood(prob[z], labels[z])
    return out


def _segment_window(prob: np.ndarray, origin: tuple[int, int], h: float) -> np.ndarray:
    """Seeds and watershed of one window (no cleanup), with position-based tie breaking."""
    markers, _ = _seeds(prob, h)
    y0, x0 = origin
    tie = _tie_breaker(y0, y0 + prob.shape[0], x0, x0 + prob.shape[1])
    return _flood(prob, markers, tie)


def _cores(size: int, window: int) -> list[tuple[int, int]]:
    return [(a, min(a + window, size)) for a in range(0, size, window)]


def _links(view: np.ndarray, assembled: np.ndarray, n_ids: int) -> np.ndarray:
    """(k, 2) id pairs (window label, neighbour piece): the window label covers more than
    half of the piece's pixels in the strip. Pixels where either is 0 do not count."""
    both = (view > 0) & (assembled > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    keys, counts = np.unique(assembled[both].astype(np.int64) * n_ids + view[both],
                             return_counts=True)
    piece, label = np.divmod(keys, n_ids)
    ids, px = np.unique(assembled[both], return_counts=True)
    order = np.lexsort((-counts, piece))  # per piece, the largest overlap first
    piece, label, counts = piece[order], label[order], counts[order]
    first = np.r_[True, piece[1:] != piece[:-1]]
    keep = first & (2 * counts > px[np.searchsorted(ids, piece)])
    return np.stack([label[keep], piece[keep]], axis=1)


def segment_section(prob: np.ndarray, cfg: InstanceConfig | None = None) -> np.ndarray:
    """2D instance segmentation of one section: one id per cell profile.

    Seeds are the h-minima of the membrane map (basins deeper than ``cfg.h``), a watershed
    floods the map from them, pixels above ``cfg.membrane_threshold`` become 0 and segments
    under ``cfg.min_size`` px are dropped (mEMbrain's ``compute2dsegs``). Large sections are
    processed in windows of ``cfg.window`` px with ``cfg.halo`` px of context and joined,
    with the same result as one window up to the numbering (see the module docstring).

    Parameters
    ----------
    prob : ndarray (y, x)
        Membrane probability, membrane bright: uint8/uint16 tiles or floats in [0, 1]
        (converted by :func:`to_probability`).
    cfg : InstanceConfig, optional
        Defaults as mEMbrain.

    Returns
    -------
    labels : ndarray (y, x), uint32
        Ids 1..n (consecutive; the order carries no meaning); 0 marks membrane and
        removed pixels.
    """
    cfg = cfg or InstanceConfig()
    if prob.ndim != 2:
        raise ValueError(f"segment_section takes one (y, x) section, got shape {prob.shape}")
    prob = _smooth(to_probability(prob), cfg.sigma)
    ny, nx = prob.shape
    rows, cols = _cores(ny, cfg.window), _cores(nx, cfg.window)
    assembled = np.zeros(prob.shape, np.uint32)
    strips: list[tuple[tuple[slice, slice], np.ndarray]] = []
    next_id = 1
    strip = cfg.halo // 2
    for y0, y1 in rows:
        for x0, x1 in cols:
            wy0, wy1 = max(0, y0 - cfg.halo), min(ny, y1 + cfg.halo)
            wx0, wx1 = max(0, x0 - cfg.halo), min(nx, x1 + cfg.halo)
            lab = _segment_window(prob[wy0:wy1, wx0:wx1], (wy0, wx0), cfg.h).astype(np.uint32)
            n = int(lab.max(initial=0))
            lab[lab > 0] += np.uint32(next_id - 1)
            next_id += n
            assembled[y0:y1, x0:x1] = lab[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
            sy0, sy1 = max(0, y0 - strip), min(ny, y1 + strip)
            sx0, sx1 = max(0, x0 - strip), min(nx, x1 + strip)
            ring = lab[sy0 - wy0:sy1 - wy0, sx0 - wx0:sx1 - wx0].copy()
            ring[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0] = 0  # only beyond the core
            strips.append(((slice(sy0, sy1), slice(sx0, sx1)), ring))
    if len(strips) > 1:
        links = np.concatenate([_links(ring, assembled[sl], next_id) for sl, ring in strips])
        assembled = _join(assembled, links, next_id)
    return _finish(assembled, prob, cfg.membrane_threshold, cfg.min_size)


def _join(labels: np.ndarray, links: np.ndarray, n_ids: int) -> np.ndarray:
    """Relabel so linked ids share one (the smallest id of each connected group)."""
    if links.size == 0:
        return labels
    graph = sparse.coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])),
                              shape=(n_ids, n_ids))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, n_ids, np.int64)
    np.minimum.at(first, comp, np.arange(n_ids))
    root = first[comp]
    root[0] = 0
    return root[labels]


def segment_stack(prob: np.ndarray, cfg: InstanceConfig | None = None,
                  progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> np.ndarray:
    """2D instances of every section of a volume, with ids unique in the whole volume.

    Each section is segmented by :func:`segment_section`; section z's ids follow those of
    section z - 1, so the result can be linked in 3D by :func:`agglomerate` or painted as
    2D instances without id clashes.

    Parameters
    ----------
    prob : ndarray (z, y, x)
        Membrane probability (uint8/uint16 tiles or floats in [0, 1]), membrane bright.
    cfg : InstanceConfig, optional
    progress : callable, optional
        Receives one :class:`membrane_py.events.Progress` per section.
    cancel : CancelToken, optional
        Checked before each section; raises ``Cancelled`` when set.

    Returns
    -------
    labels : ndarray (z, y, x), uint32
        Ids 1..N over the volume (N = the total number of segments), increasing with z;
        0 marks membrane and removed pixels.
    """
    cfg = cfg or InstanceConfig()
    if prob.ndim != 3:
        raise ValueError(f"expected a (z, y, x) probability volume, got shape {prob.shape}")
    out = np.zeros(prob.shape, np.uint32)
    offset = 0
    for z in range(prob.shape[0]):
        if cancel is not None:
            cancel.check()
        lab = segment_section(prob[z], cfg)
        n = int(lab.max(initial=0))
        if offset + n > MAX_ID:
            raise ValueError(f"more than {MAX_ID} segments in {z + 1} sections: process the "
                             "volume in smaller boxes")
        out[z] = np.where(lab > 0, lab + np.uint32(offset), 0)
        offset += n
        report(progress, Event.progress("2D instances", z + 1, prob.shape[0], f"{n} segments"))
    return out


def membrane_map_from_labels(labels: np.ndarray, thickness: int = 3, blur: float = 1.5,
                             noise: float = 0.0, noise_scale: float = 3.0,
                             seed: int = 0) -> np.ndarray:
    """An idealised membrane prediction made from instance ground truth.

    Tests and benchmarks use it as an upper bound of what a network could deliver, and
    to know the expected segmentation of a probability map by construction.

    Parameters
    ----------
    labels : ndarray (z, y, x) of integer instance ids; id 0 counts as membrane
    thickness : int
        Width of the boundary band (px) as in
        :func:`membrane_py.augment.labels.instances_to_membrane`.
    blur : float
        Gaussian sigma (px) applied to the band; the result is scaled so a straight band
        of ``thickness`` px peaks at 1. 0 keeps the band sharp (exactly 0 or 1).
    noise, noise_scale : float
        Standard deviation of added smooth noise and its Gaussian correlation length (px).
    seed : int
        Seed of the noise generator; equal seeds give equal maps.

    Returns
    -------
    prob : ndarray (z, y, x), float32 in [0, 1], membrane bright
    """
    from scipy.special import erf

    from membrane_py.augment.labels import MEMBRANE, instances_to_membrane

    rng = np.random.default_rng(seed)
    peak = float(erf(thickness / (2 * np.sqrt(2) * blur))) if blur > 0 else 1.0
    out = np.empty(labels.shape, np.float32)
    for z, section in enumerate(labels):
        band = (instances_to_membrane(section, thickness, fill_ecs=True) == MEMBRANE)
        p = ndi.gaussian_filter(band.astype(np.float32), blur) / peak if blur > 0 else band
        if noise > 0:
            n = ndi.gaussian_filter(rng.standard_normal(section.shape).astype(np.float32),
                                    noise_scale)
            p = p + noise * n / max(float(n.std()), 1e-6)
        out[z] = np.clip(p, 0, 1)
    return out
