"""Procedural serial-section EM with exact ground truth, for tests, demos and benchmarks.

Cells are neurite profiles: many small "axons" (a warped Voronoi diagram of jittered-grid
seeds) around a few large round "dendrites", each following a slowly drifting track through
the sections, so a cell changes little from one section to the next. Membranes are the
boundary band between different ids, exactly as the instance-to-membrane conversion
computes it (per section, a ``MEMBRANE_THICKNESS`` square window holding more than one id).
Mitochondria are dark ellipsoids inside some cells, vesicles small light rings with a dark
rim in some "boutons". The image gets texture, blur, noise and per-section brightness and
contrast drift. Everything is drawn section by section in float32 to keep memory small.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from membrane_py.volumes.base import ArrayVolume

#: side of the square window used to turn instance boundaries into membrane bands (px)
MEMBRANE_THICKNESS = 5
_AXON_SPACING = 44.0  # px between small-cell seeds (~350 nm at 8 nm/px)
_DENDRITE_AREA = 60_000  # px^2 of section area per large cell
_PAD = 48  # margin drawn around each section so warped edges still have cells


@dataclass
class SyntheticEM:
    """A synthetic EM volume and its ground truth, all (z, y, x)."""

    em: np.ndarray  # uint8 image
    instances: np.ndarray  # uint32 cell ids 1..N; every voxel belongs to a cell
    membranes: np.ndarray  # uint8, 1 = non-membrane, 2 = membrane
    mito: np.ndarray  # uint8, 1 = mitochondrion
    voxel_size: tuple[float, float, float]  # nm (z, y, x)


def membrane_band(section: np.ndarray, thickness: int = MEMBRANE_THICKNESS) -> np.ndarray:
    """Bool mask of one 2D label section: True where a thickness^2 window holds >1 id."""
    kernel = np.ones((thickness, thickness), np.uint8)
    return cv2.erode(section, kernel) != cv2.dilate(section, kernel)


def _smooth_field(rng: np.random.Generator, nz: int, shape: tuple[int, int], period: float,
                  amplitude: float, z_smooth: float) -> np.ndarray:
    """Low-resolution random field (nz, gy, gx), smooth in z, RMS ``amplitude``."""
    gy, gx = (max(2, int(np.ceil(s / period)) + 2) for s in shape)
    f = rng.standard_normal((nz + 8, gy, gx)).astype(np.float32)
    k = np.exp(-0.5 * (np.arange(-8, 9) / max(z_smooth, 1e-3)) ** 2).astype(np.float32)
    k /= np.sqrt((k**2).sum())
    f = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, f)[4:4 + nz]
    return f * amplitude


def _upsample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(field, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


class _Tracks:
    """Cell centre tracks: position of every seed at a section, ids and sizes."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int]) -> None:
        nz, ny, nx = shape
        h, w = ny + 2 * _PAD, nx + 2 * _PAD
        # small cells: a jittered hexagonal grid with some holes, over the padded canvas
        sp = _AXON_SPACING
        rows = np.arange(-sp, h + sp, sp * 0.866)
        cols = np.arange(-sp, w + sp, sp)
        pts = np.array([(r, c + (i % 2) * sp / 2) for i, r in enumerate(rows) for c in cols],
                       np.float32)
        small = pts + rng.uniform(-0.33, 0.33, pts.shape).astype(np.float32) * sp
        small = small[rng.random(len(small)) > 0.2]
        n_large = max(1, int(round(h * w / _DENDRITE_AREA)))
        large = rng.uniform((0, 0), (h, w), (n_large, 2)).astype(np.float32)
        self.pos0 = np.concatenate([small, large])
        self.n_small = len(small)
        n = len(self.pos0)
        if n >= 65535:
            raise ValueError(f"synthetic volume too large: {n} cells do not fit uint16 ids")
        self.radius = rng.uniform(45, 110, n_large).astype(np.float32)
        # drift: bundles share a direction, each cell adds its own; plus a gentle wobble
        bundle = rng.normal(0, 1.2, 2)
        self.vel = (bundle + rng.normal(0, 0.8, (n, 2))).astype(np.float32)
        self.vel[self.n_small:] *= 0.4
        self.wobble = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        self.zc = nz / 2

    def at(self, z: int) -> np.ndarray:
        t = z - self.zc
        return self.pos0 + self.vel * t + 2.0 * np.sin(0.2 * t + self.wobble)[:, None]


def _section_labels(tracks: _Tracks, z: int, canvas: tuple[int, int]) -> np.ndarray:
    """Pre-warp label canvas (uint16, ids = seed index + 1) of one section."""
    h, w = canvas
    pos = tracks.at(z)
    iy, ix = np.rint(pos[:, 0]).astype(np.int64), np.rint(pos[:, 1]).astype(np.int64)
    small = np.arange(tracks.n_small)
    small = small[(iy[small] >= 0) & (iy[small] < h) & (ix[small] >= 0) & (ix[small] < w)]
    seeds = np.full((h, w), 255, np.uint8)
    seeds[iy[small], ix[small]] = 0
    _, vor = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(vor.max() + 1, np.uint16)
    lut[vor[iy[small], ix[small]]] = small + 1  # cv2 numbers seed pixels itself: map to our ids
    labels = lut[vor]
    best = np.ones((h, w), np.float32)
    for k, rad in enumerate(tracks.radius):
        i = tracks.n_small + k
        cy, cx = pos[i]
        y0, y1 = max(0, int(cy - rad)), min(h, int(cy + rad) + 1)
        x0, x1 = max(0, int(cx - rad)), min(w, int(cx + rad) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d = np.sqrt(((yy - cy) ** 2 + (xx - cx) ** 2).astype(np.float32)) / rad
        win = d < best[y0:y1, x0:x1]
        best[y0:y1, x0:x1][win] = d[win]
        labels[y0:y1, x0:x1][win] = i + 1
    return labels


@dataclass
class _Mito:
    owner: int  # seed index
    z: float
    half_z: float
    axes: tuple[float, float]
    angle: float
    offset: tuple[float, float]


def _plan_mitos(rng: np.random.Generator, tracks: _Tracks, nz: int) -> list[_Mito]:
    """About a fifth of the small cells hold one mitochondrion, large cells one to three."""
    n = len(tracks.pos0)
    owners = list(np.flatnonzero(rng.random(tracks.n_small) < 0.22))
    owners += [i for i in range(tracks.n_small, n) for _ in range(rng.integers(1, 4))]
    mitos = []
    for i in owners:
        if i >= tracks.n_small:
            length, width = rng.uniform(30, 80), rng.uniform(13, 22)
            off = rng.uniform(-0.45, 0.45, 2) * tracks.radius[i - tracks.n_small]
        else:
            length, width, off = rng.uniform(18, 36), rng.uniform(10, 14), (0.0, 0.0)
        mitos.append(_Mito(int(i), rng.uniform(-2, nz + 2), rng.uniform(3, 10),
                           (length / 2, width / 2), rng.uniform(0, 180), (off[0], off[1])))
    return mitos


def _draw_mitos(mitos: list[_Mito], tracks: _Tracks, z: int, canvas: tuple[int, int]) -> np.ndarray:
    """Pre-warp canvas holding, per pixel, the owner id of a mitochondrion drawn there."""
    out = np.zeros(canvas, np.uint16)
    pos = tracks.at(z)
    for m in mitos:
        f = 1 - ((z - m.z) / m.half_z) ** 2
        if f <= 0.05:
            continue
        s = np.sqrt(f)
        cy, cx = pos[m.owner] + np.asarray(m.offset)
        axes = (max(1, int(m.axes[0] * s)), max(1, int(m.axes[1] * s)))
        cv2.ellipse(out, (int(cx), int(cy)), axes, m.angle, 0, 360, int(m.owner + 1), -1)
    return out


def _ring_kernel(radius: float) -> np.ndarray:
    r = int(np.ceil(radius + 2))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    d = np.hypot(yy, xx)
    rim = np.exp(-0.5 * ((d - radius) / 0.7) ** 2)
    return (rim - 0.6 * np.exp(-0.5 * (d / 1.2) ** 2)).astype(np.float32)


def make_synthetic(shape: tuple[int, int, int] = (32, 1024, 1024), seed: int = 0,
                   voxel_size: tuple[float, float, float] = (40.0, 8.0, 8.0)) -> SyntheticEM:
    """A synthetic serial-section EM volume with instance, membrane and mitochondria truth.

    Deterministic: the same shape and seed give byte-identical arrays.
    """
    nz, ny, nx = (int(s) for s in shape)
    if nz < 1 or ny < 8 or nx < 8:
        raise ValueError(f"synthetic shape must be at least (1, 8, 8), got {shape}")
    rng = np.random.default_rng(seed)
    canvas = (ny + 2 * _PAD, nx + 2 * _PAD)
    tracks = _Tracks(rng, (nz, ny, nx))
    mitos = _plan_mitos(rng, tracks, nz)
    n_cells = len(tracks.pos0)
    tone = rng.normal(172, 10, n_cells + 1).astype(np.float32)  # cytoplasm grey per cell
    tone[tracks.n_small + 1:] += 8
    bouton = rng.random(n_cells + 1) < 0.1
    bouton[0] = False
    warp = [(_smooth_field(rng, nz, (ny, nx), 200, 13, 6),
             _smooth_field(rng, nz, (ny, nx), 45, 3.5, 3)) for _ in range(2)]
    gain = rng.normal(1.0, 0.04, nz).astype(np.float32)
    bias = rng.normal(0.0, 5.0, nz).astype(np.float32)
    ring = _ring_kernel(2.6)
    grid_y, grid_x = np.mgrid[0:ny, 0:nx].astype(np.float32)

    ids = np.empty((nz, ny, nx), np.uint16)
    em = np.empty((nz, ny, nx), np.uint8)
    membranes = np.empty((nz, ny, nx), np.uint8)
    mito = np.empty((nz, ny, nx), np.uint8)
    for z in range(nz):
        dy = sum(_upsample(f[z], (ny, nx)) for f in warp[0])
        dx = sum(_upsample(f[z], (ny, nx)) for f in warp[1])
        map_y, map_x = grid_y + dy + _PAD, grid_x + dx + _PAD
        lab = cv2.remap(_section_labels(tracks, z, canvas), map_x, map_y, cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_REPLICATE)
        band = membrane_band(lab)
        owner = cv2.remap(_draw_mitos(mitos, tracks, z, canvas), map_x, map_y, cv2.INTER_NEAREST)
        inside = ~cv2.dilate(band.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)
        mz = (owner == lab) & (owner > 0) & inside
        ids[z], membranes[z], mito[z] = lab, 1 + band, mz
        em[z] = _render(rng, lab, band, mz, tone, bouton, ring, gain[z], bias[z])

    # compact ids to 1..N (ids present anywhere in the volume keep their relative order)
    present = np.bincount(ids.ravel(), minlength=n_cells + 1) > 0
    present[0] = False
    lut = np.zeros(n_cells + 1, np.uint32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    instances = lut[ids]
    return SyntheticEM(em, instances, membranes, mito, tuple(float(v) for v in voxel_size))


def _render(rng: np.random.Generator, lab: np.ndarray, band: np.ndarray, mito: np.ndarray,
            tone: np.ndarray, bouton: np.ndarray, ring: np.ndarray, gain: float,
            bias: float) -> np.ndarray:
    """One EM section (uint8) from its labels and masks."""
    ny, nx = lab.shape
    img = tone[lab]
    # cytoplasm texture: blotchy low-frequency grain
    grain = cv2.GaussianBlur(rng.standard_normal((ny, nx), dtype=np.float32), (0, 0), 2.0)
    fine = cv2.GaussianBlur(rng.standard_normal((ny, nx), dtype=np.float32), (0, 0), 0.8)
    img += grain * 30 + fine * 14
    # vesicles: light rings with a dark rim, dense in boutons, rare elsewhere
    density = np.where(bouton[lab] & ~band & ~mito, 0.006, 0.0003).astype(np.float32)
    centres = (rng.random((ny, nx), dtype=np.float32) < density).astype(np.float32)
    img -= cv2.filter2D(centres, -1, ring) * 60
    # mitochondria: dark matrix with darker cristae stripes
    if mito.any():
        yy, xx = np.ogrid[0:ny, 0:nx]
        stripes = np.sin(rng.uniform(0.5, 0.9) * (xx + 0.6 * yy)).astype(np.float32)
        img[mito] = 105 + 14 * stripes[mito] + grain[mito] * 10
    img[band] = 62 + grain[band] * 10
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img += rng.standard_normal((ny, nx), dtype=np.float32) * 14
    img = (img - 128) * gain + 128 + bias
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def synthetic_volumes(shape: tuple[int, int, int] = (32, 1024, 1024),
                      seed: int = 0) -> tuple[ArrayVolume, ArrayVolume]:
    """(EM volume, instance-label volume) of ``make_synthetic(shape, seed)``, memoised."""
    s = make_synthetic(tuple(shape), seed)
    em = ArrayVolume(s.em, s.voxel_size, name="synthetic EM")
    labels = ArrayVolume(s.instances, s.voxel_size, name="synthetic ground truth", is_label=True)
    return em, labels
