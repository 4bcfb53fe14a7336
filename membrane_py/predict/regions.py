"""Which tiles a prediction job writes, and how they are grouped into chunk reads.

A region (the whole volume, a box, cubes around VAST's view or around skeleton anchors or
nodes) is a list of mip-0 boxes. :func:`plan_tiles` scales them to the predicted mip,
snaps them outwards to the tile grid and merges them into a :class:`TilePlan`: for every
tile column (row, col), the merged z runs to predict, so overlapping cubes never predict a
tile twice. :meth:`TilePlan.chunks` groups the tiles into chunk reads on a global grid
(z blocks outermost), each chunk a tile-aligned box and the planned tiles inside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from membrane_py.geometry import Box, size_at_mip
from membrane_py.predict.job import RegionSpec
from membrane_py.vastapi.client import VastClient

TileKey = tuple[int, int, int]  # (z, row, col) at the plan's mip
SKELETON = 1  # annotation object type of a skeleton (0 is a folder)


@dataclass(frozen=True)
class PlannedChunk:
    """One chunk read: its tile-aligned ``core`` box and the planned tiles inside it."""

    block: int  # z block number (core.z0 // chunk z)
    core: Box
    tiles: tuple[TileKey, ...]


@dataclass(frozen=True, eq=False)
class TilePlan:
    """The tiles to predict at ``mip``: merged z runs (half-open) per tile column."""

    mip: int
    shape: tuple[int, int, int]  # volume size at ``mip``
    tile: int
    columns: dict[tuple[int, int], tuple[tuple[int, int], ...]]

    @property
    def n_tiles(self) -> int:
        return sum(z1 - z0 for runs in self.columns.values() for z0, z1 in runs)

    def tiles(self, z0: int = 0, z1: int | None = None) -> list[TileKey]:
        """The planned tiles with z in [z0, z1), sorted (z, row, col)."""
        z1 = self.shape[0] if z1 is None else z1
        return sorted((z, r, c) for (r, c), runs in self.columns.items() for a, b in runs
                      for z in range(max(a, z0), min(b, z1)))

    def sections(self) -> list[int]:
        """Every section that holds at least one planned tile."""
        return sorted({z for runs in self.columns.values() for a, b in runs
                       for z in range(a, b)})

    def blocks(self, chunk_z: int) -> list[int]:
        """The z blocks (``z // chunk_z``) that hold planned tiles, in order."""
        return sorted({k for runs in self.columns.values() for a, b in runs
                       for k in range(a // chunk_z, (b - 1) // chunk_z + 1)})

    def chunks(self, chunk: tuple[int, int, int]) -> Iterator[PlannedChunk]:
        """Chunk reads on the global grid of ``chunk`` (z, y, x): z blocks outermost, then
        rows, then columns; each core is the bounding box of its planned tiles."""
        cz, cy, cx = chunk
        gy, gx = max(1, cy // self.tile), max(1, cx // self.tile)
        cells: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for r, c in self.columns:
            cells[(r // gy, c // gx)].append((r, c))
        _, h, w = self.shape
        t = self.tile
        for k in self.blocks(cz):
            lo, hi = k * cz, (k + 1) * cz
            for cell in sorted(cells):
                tiles = sorted((z, r, c) for r, c in cells[cell] for a, b in self.columns[(r, c)]
                               for z in range(max(a, lo), min(b, hi)))
                if not tiles:
                    continue
                zs = [z for z, _, _ in tiles]
                rs = [r for _, r, _ in tiles]
                cs = [c for _, _, c in tiles]
                core = Box(min(zs), max(zs) + 1, min(rs) * t, min((max(rs) + 1) * t, h),
                           min(cs) * t, min((max(cs) + 1) * t, w))
                yield PlannedChunk(k, core, tuple(tiles))


def _merge(runs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Union of half-open intervals, sorted and with touching ones joined."""
    out: list[list[int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def plan_tiles(boxes: Iterable[Box], shape0: tuple[int, int, int], mip: int,
               tile: int = 1024) -> TilePlan:
    """Tiles at ``mip`` that cover the mip-0 ``boxes`` (clipped to the volume), merged."""
    shape = size_at_mip(shape0, mip)
    if min(shape) < 1:
        raise ValueError(f"the volume {shape0} (z, y, x) is empty at mip {mip}; "
                         "choose a lower mip")
    full = Box.full(shape)
    found: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for box0 in boxes:
        box = box0.to_mip(mip).intersect(full)
        if box.empty:
            continue
        for r in range(box.y0 // tile, math.ceil(box.y1 / tile)):
            for c in range(box.x0 // tile, math.ceil(box.x1 / tile)):
                found[(r, c)].append((box.z0, box.z1))
    if not found:
        raise ValueError(f"the region lies outside the volume (mip-0 size x={shape0[2]}, "
                         f"y={shape0[1]}, z={shape0[0]}); nothing to predict")
    return TilePlan(mip, shape, tile, {k: _merge(v) for k, v in sorted(found.items())})


def cube_around(point: tuple[int, int, int], size_xy: int, depth: int,
                shape0: tuple[int, int, int]) -> Box:
    """The mip-0 box ``size_xy`` wide and ``depth`` deep centred on (x, y, z), clipped."""
    x, y, z = point
    h, d = size_xy // 2, depth // 2
    return Box(z - d, z - d + depth, y - h, y - h + size_xy,
               x - h, x - h + size_xy).clip(shape0)


def skeleton_points(client: VastClient, anno_layer: int | None,
                    per_node: bool) -> list[tuple[int, int, int]]:
    """Anchor points of the skeletons of a VAST annotation layer (or all their nodes).

    Selects the layer for the API (``anno_layer``, default the layer selected in VAST), as
    mEMbrain does; for nodes it selects each skeleton in turn.
    """
    client.set_api_layers_enabled(True)
    nr = client.get_selected_layers().annotation if anno_layer is None else anno_layer
    if nr < 0:
        raise ValueError("VAST has no annotation layer selected: select the skeleton layer "
                         "in VAST or give its layer number (anno_layer / --anno-layer)")
    client.set_selected_api_layer(nr)
    skeletons = [o for o in client.get_anno_object_data() if o.type == SKELETON]
    if not per_node:
        return [o.anchor for o in skeletons]
    points: list[tuple[int, int, int]] = []
    for o in skeletons:
        client.set_selected_anno_object(o.id)
        points += [(n.x, n.y, n.z) for n in client.get_ao_node_data()]
    return points


def region_boxes(region: RegionSpec, shape0: tuple[int, int, int],
                 client: VastClient | None) -> list[Box]:
    """The mip-0 boxes of a region; VAST is asked for the view or skeletons when needed."""
    if region.mode == "volume":
        return [Box.full(shape0)]
    if region.mode == "box":
        return [Box.from_vast(*region.box)]
    points = region.points
    if points is None:
        if client is None:
            raise ValueError(f"region {region.mode!r} asks VAST for its points: use a vast:// "
                             "source or give the VAST address (vast / --vast), or list the "
                             "points yourself (points / --point)")
        if region.mode == "view":
            points = [client.get_view_coordinates()]
        else:
            points = skeleton_points(client, region.anno_layer, region.mode == "nodes")
    if not points:
        raise ValueError(f"region {region.mode!r}: no skeletons found in the annotation layer; "
                         "draw one in VAST or choose another layer")
    return [cube_around(tuple(p), region.size_xy, region.depth, shape0) for p in points]


def plan_region(region: RegionSpec, shape0: tuple[int, int, int], mip: int, tile: int,
                client: VastClient | None) -> TilePlan:
    """The :class:`TilePlan` of a job's region."""
    return plan_tiles(region_boxes(region, shape0, client), shape0, mip, tile)
