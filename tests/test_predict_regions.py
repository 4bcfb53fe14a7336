"""Prediction regions: exactly which tiles each mode predicts, and how they become chunk reads.

Expected tile sets are computed here by brute force over pixel coordinates, independently
of the planner; VAST's view and skeletons come from a real mock server process.
"""

from __future__ import annotations

import json
import math

import pytest
from predict_support import tile_keys, tiny_checkpoint

from membrane_py.geometry import Box
from membrane_py.predict.job import PredictJob, RegionSpec
from membrane_py.predict.regions import cube_around, plan_region
from membrane_py.predict.runner import run_prediction
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.blocks import plan_tiles
from mock_vast_server.launch import start_server

SHAPE = (6, 256, 320)  # mip-0 (z, y, x) of the served volume
TILE = 64
SKELETONS = [  # name, nodes (x, y, z); the first node is the anchor
    ("a", [(40, 40, 1), (100, 60, 2), (250, 200, 4)]),
    ("b", [(60, 50, 1), (300, 250, 5)]),  # anchor cube overlaps a's
]


def brute_tiles(boxes0: list[Box], shape0, mip: int, tile: int) -> set[tuple[int, int, int]]:
    """Every (z, row, col) that holds a pixel of a box, visiting pixels at the mip."""
    f = 1 << mip
    h, w = shape0[1] >> mip, shape0[2] >> mip
    out = set()
    for b in boxes0:
        for z in range(max(b.z0, 0), min(b.z1, shape0[0])):
            for y in range(max(b.y0 // f, 0), min(math.ceil(b.y1 / f), h)):
                for x in range(max(b.x0 // f, 0), min(math.ceil(b.x1 / f), w)):
                    out.add((z, y // tile, x // tile))
    return out


def cube(point, size, depth) -> Box:
    x, y, z = point
    return Box(z - depth // 2, z - depth // 2 + depth, y - size // 2, y - size // 2 + size,
               x - size // 2, x - size // 2 + size)


def test_whole_volume_chunks_partition_the_tiles():
    shape0 = (5, 250, 330)
    plan = plan_tiles([Box.full(shape0)], shape0, mip=0, tile=100)
    assert set(plan.tiles()) == {(z, r, c) for z in range(5) for r in range(3) for c in range(4)}
    assert plan.n_tiles == 60 and plan.sections() == list(range(5))
    chunks = list(plan.chunks((2, 200, 100)))
    seen = [k for ch in chunks for k in ch.tiles]
    assert sorted(seen) == plan.tiles()  # every tile in exactly one chunk
    assert [ch.z_block for ch in chunks] == sorted(ch.z_block for ch in chunks)  # z blocks first
    for ch in chunks:
        assert Box.full(shape0).contains(ch.core) and ch.core.shape[0] <= 2
        assert ch.core.y0 % 100 == 0 and ch.core.x0 % 100 == 0
        assert {z for z, _, _ in ch.tiles} == set(range(ch.core.z0, ch.core.z1))
        assert ch.z_block == ch.core.z0 // 2
    assert chunks[0].core == Box(0, 2, 0, 200, 0, 100)
    assert chunks[-1].core == Box(4, 5, 200, 250, 300, 330)  # clipped edge chunk


def test_box_is_scaled_to_the_mip_and_snapped_to_tiles():
    shape0 = (10, 1000, 1200)
    box = Box.from_vast(300, 555, 0, 255, 2, 4)  # x 300..555, y 0..255, z 2..4 at mip 0
    plan = plan_tiles([box], shape0, mip=1, tile=128)  # x 150..277 at mip 1
    assert set(plan.tiles()) == {(z, 0, c) for z in (2, 3, 4) for c in (1, 2)}
    assert plan.shape == (10, 500, 600)
    assert set(plan.tiles()) == brute_tiles([box], shape0, 1, 128)
    cores = [ch.core for ch in plan.chunks((16, 256, 256))]  # columns 1 and 2 lie in two
    assert cores == [Box(2, 5, 0, 128, 128, 256), Box(2, 5, 0, 128, 256, 384)]  # grid cells


def test_overlapping_cubes_merge_so_no_tile_is_predicted_twice():
    shape0 = (20, 700, 900)
    points = [(100, 100, 3), (150, 120, 5), (880, 690, 19), (150, 120, 5)]
    boxes = [cube_around(p, 300, 6, shape0) for p in points]
    plan = plan_tiles(boxes, shape0, mip=0, tile=128)
    expected = brute_tiles([cube(p, 300, 6) for p in points], shape0, 0, 128)
    assert set(plan.tiles()) == expected and plan.n_tiles == len(expected)
    seen = [k for ch in plan.chunks((4, 128, 128)) for k in ch.tiles]
    assert len(seen) == len(set(seen)) == len(expected)
    assert cube_around((880, 690, 19), 300, 6, shape0) == Box(16, 20, 540, 700, 730, 900)


def test_bad_regions_are_explained():
    with pytest.raises(ValueError, match="outside the volume"):
        plan_tiles([Box.from_vast(5000, 5100, 0, 10, 0, 0)], (2, 100, 100), 0, 64)
    with pytest.raises(ValueError, match="empty at mip 8"):
        plan_tiles([Box.full((2, 100, 100))], (2, 100, 100), 8, 64)
    with pytest.raises(ValueError, match="needs box"):
        RegionSpec(mode="box")
    with pytest.raises(ValueError, match="region mode must be one of"):
        RegionSpec(mode="everything")
    with pytest.raises(ValueError, match="asks VAST for its points"):
        plan_region(RegionSpec(mode="view"), (2, 100, 100), 0, 64, None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("skel")
    doc = {"objects": [{"name": name, "nodes": [
        {"id": i, "x": x, "y": y, "z": z, "parent": i - 1 if i else None}
        for i, (x, y, z) in enumerate(nodes)]} for name, nodes in SKELETONS]}
    (folder / "skeletons.json").write_text(json.dumps(doc))
    with start_server(f"synthetic:{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}",
                      skeletons=folder / "skeletons.json", state_dir=folder / "state") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with VastClient(server.host, server.port) as c:
        yield c


@pytest.mark.parametrize("mip", [0, 1])
def test_view_anchor_and_node_cubes_from_vast(client, mip):
    client.set_view_coordinates(200, 130, 3)
    spec = {"size_xy": 80, "depth": 3}
    got = {mode: set(plan_region(RegionSpec(mode=mode, **spec), SHAPE, mip, TILE, client).tiles())
           for mode in ("view", "anchors", "nodes")}
    points = {"view": [(200, 130, 3)], "anchors": [nodes[0] for _, nodes in SKELETONS],
              "nodes": [p for _, nodes in SKELETONS for p in nodes]}
    for mode, pts in points.items():
        assert got[mode] == brute_tiles([cube(p, 80, 3) for p in pts], SHAPE, mip, TILE), mode
    layer = client.get_layer_names().index("skeletons")
    explicit = plan_region(RegionSpec(mode="anchors", anno_layer=layer, **spec), SHAPE, mip, TILE,
                           client)
    assert set(explicit.tiles()) == got["anchors"]


def test_anchor_run_writes_exactly_the_planned_tiles(server, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    job = PredictJob(checkpoint=str(ckpt), source=f"vast://{server.host}:{server.port}",
                     out=str(tmp_path / "out"), region=RegionSpec(mode="anchors", size_xy=80,
                                                                  depth=3),
                     tile=TILE, chunk=[2, 128, 128], margin=32, pyramid=False)
    result = run_prediction(job)
    expected = brute_tiles([cube(nodes[0], 80, 3) for _, nodes in SKELETONS], SHAPE, 0, TILE)
    assert tile_keys(tmp_path / "out" / "probability", 0) == expected
    assert result.tiles_written == result.tiles_total == len(expected)
    assert result.tiles_blank == result.tiles_resumed == 0
