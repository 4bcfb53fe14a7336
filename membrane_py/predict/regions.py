"""Which part of the volume a prediction job covers.

A region (the whole volume, a box, cubes around VAST's view or around skeleton anchors or
nodes) is a list of mip-0 boxes; VAST is asked for the view or the skeletons when the job
does not list its points. :func:`plan_region` turns them into the tile plan of
:mod:`membrane_py.volumes.blocks`.
"""

from __future__ import annotations

from membrane_py.events import ProgressCallback, warn
from membrane_py.geometry import Box, box_in_volume
from membrane_py.predict.job import RegionSpec
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.blocks import TilePlan, plan_tiles

SKELETON = 1  # annotation object type of a skeleton (0 is a folder)


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
                 client: VastClient | None, progress: ProgressCallback | None = None
                 ) -> list[Box]:
    """The mip-0 boxes of a region; VAST is asked for the view or skeletons when needed.

    A box must lie inside the volume (or is clipped with a warning when the region says
    ``clip``); see :func:`~membrane_py.geometry.box_in_volume`."""
    if region.mode == "volume":
        return [Box.full(shape0)]
    if region.mode == "box":
        box, clipped = box_in_volume(region.box, shape0, region.clip)
        if clipped:
            warn(progress, clipped, "region")
        return [box]
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
                client: VastClient | None, progress: ProgressCallback | None = None
                ) -> TilePlan:
    """The :class:`TilePlan` of a job's region."""
    return plan_tiles(region_boxes(region, shape0, client, progress), shape0, mip, tile)
