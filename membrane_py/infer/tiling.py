"""Tile layout, context padding, blending weights and stitching for tiled inference.

Pure NumPy and backend-agnostic, so the PyTorch and ONNX Runtime engines share every line.

Geometry. Each section is reflect-padded once (after preprocessing). Tile ``i`` along an
axis owns the *core* ``[i * stride, i * stride + core)`` and is fed the core plus ``margin``
context pixels on each side (more at the bottom/right when the network needs a side that is
a multiple of ``2**depth``). Strides are multiples of ``2**depth``, so every tile sees the
same pooling grid as a whole-section prediction: when ``margin`` covers the network's
receptive radius (see :func:`receptive_radius`), the stitched cores equal a single
whole-section pass up to floating-point reassociation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BLENDS = ("none", "cosine", "gaussian")


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def receptive_radius(depth: int) -> int:
    """Pixels of context the U-Net (two 3x3 convs per stage, 2x2 pooling) can see on each
    side of an output pixel: a margin this large makes tiling exactly invariant."""
    return 6 * 2**depth - 2


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis of length ``length``: ``count`` tiles, ``core`` output pixels each,
    ``stride`` apart, fed ``window`` input pixels starting ``margin`` before the core."""

    length: int
    count: int
    core: int
    stride: int
    window: int
    margin: int

    @property
    def pad_before(self) -> int:
        return self.margin

    @property
    def pad_after(self) -> int:
        """Padding after the data so the last window fits."""
        return (self.count - 1) * self.stride + self.window - self.margin - self.length

    @property
    def overlap(self) -> int:
        return self.core - self.stride if self.count > 1 else 0


def plan_axis(length: int, tile: int, margin: int, overlap: int, multiple: int,
              window: int | None = None) -> AxisPlan:
    """Balanced tiling of an axis.

    ``tile`` is the target core side: the axis is split into as few tiles as fit, then the
    stride is rounded up to ``multiple`` (the pooling grid). ``window`` forces the input side
    (models with a fixed input size); otherwise it is the core plus both margins, rounded up
    to ``multiple``.
    """
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    if margin < 0 or overlap < 0:
        raise ValueError(f"margin and overlap must be >= 0, got {margin}, {overlap}")
    if window is not None:
        core = window - 2 * margin
        stride = (core - overlap) // multiple * multiple
        if stride < 1:
            raise ValueError(f"fixed input side {window} leaves no stride for margin {margin}, "
                             f"overlap {overlap} and multiple {multiple}: lower margin/overlap")
        count = 1 if length <= core else 1 + math.ceil((length - core) / stride)
        return AxisPlan(length, count, core, stride, window, margin)
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        core, count, stride = length, 1, round_up(length, multiple)
    else:
        count = math.ceil((length - overlap) / (tile - overlap))
        stride = round_up(math.ceil((length - overlap) / count), multiple)
        core = stride + overlap
        count = 1 + math.ceil(max(length - core, 0) / stride)
    return AxisPlan(length, count, core, stride, round_up(core + 2 * margin, multiple), margin)


def blend_profile(plan: AxisPlan, index: int, blend: str) -> np.ndarray:
    """1D weights over the core of tile ``index``.

    ``cosine`` ramps (0.5 - 0.5 cos) across each overlap shared with a neighbour: the ramps
    of two neighbours add up to exactly 1, and sides without a neighbour keep weight 1.
    ``gaussian`` is a bell (sigma = core / 4) centred on the core; ``none`` is flat, i.e.
    overlapping predictions are averaged.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    w = np.ones(plan.core, np.float32)
    if blend == "gaussian":
        pos = np.arange(plan.core, dtype=np.float32) - (plan.core - 1) / 2
        w = np.exp(-0.5 * (pos / (plan.core / 4)) ** 2).astype(np.float32)
    elif blend == "cosine" and plan.overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(plan.overlap) + 0.5) / plan.overlap)
        if index > 0:
            w[: plan.overlap] = ramp
        if index < plan.count - 1:
            w[-plan.overlap:] = ramp[::-1]
    return w


@dataclass(frozen=True)
class Tile:
    """One network input: section ``z``, window origin (in padded coordinates, equal to the
    core origin in section coordinates) and grid position."""

    z: int
    y: int
    x: int
    row: int
    col: int


@dataclass(frozen=True)
class TileGrid:
    """The tiling of a (z, y, x) stack: the same plan for every section."""

    depth: int
    ys: AxisPlan
    xs: AxisPlan

    @property
    def window(self) -> tuple[int, int]:
        return self.ys.window, self.xs.window

    def __len__(self) -> int:
        return self.depth * self.ys.count * self.xs.count

    def tiles(self) -> Iterator[Tile]:
        for z in range(self.depth):
            for r in range(self.ys.count):
                for c in range(self.xs.count):
                    yield Tile(z, r * self.ys.stride, c * self.xs.stride, r, c)

    def pad(self, sections: np.ndarray) -> np.ndarray:
        """Reflect-pad preprocessed (z, y, x) sections so that every window lies inside."""
        return np.pad(sections, ((0, 0), (self.ys.pad_before, self.ys.pad_after),
                                 (self.xs.pad_before, self.xs.pad_after)), mode="reflect")


class Stitcher:
    """Accumulates tile predictions into a (z, C, y, x) float32 array.

    Without overlap each pixel belongs to exactly one core and is copied; with overlap the
    cores are weighted by the blend profiles and normalised by the summed weights.
    """

    def __init__(self, grid: TileGrid, n_classes: int, blend: str = "none") -> None:
        self.grid = grid
        self.out = np.zeros((grid.depth, n_classes, grid.ys.length, grid.xs.length), np.float32)
        self.blended = grid.ys.overlap > 0 or grid.xs.overlap > 0
        if self.blended:
            self.weight = np.zeros((grid.depth, 1, grid.ys.length, grid.xs.length), np.float32)
            self.wy = [blend_profile(grid.ys, i, blend) for i in range(grid.ys.count)]
            self.wx = [blend_profile(grid.xs, i, blend) for i in range(grid.xs.count)]

    def add(self, tile: Tile, probs: np.ndarray) -> None:
        """Place the core of one (C, window_y, window_x) prediction."""
        ys, xs = self.grid.ys, self.grid.xs
        h = min(ys.core, ys.length - tile.y)
        w = min(xs.core, xs.length - tile.x)
        core = probs[:, ys.margin: ys.margin + h, xs.margin: xs.margin + w]
        dst = (tile.z, slice(None), slice(tile.y, tile.y + h), slice(tile.x, tile.x + w))
        if not self.blended:
            self.out[dst] = core
            return
        wt = self.wy[tile.row][:h, None] * self.wx[tile.col][None, :w]
        self.out[dst] += core * wt
        self.weight[dst] += wt

    def result(self) -> np.ndarray:
        if self.blended:
            self.out /= self.weight
        return self.out
