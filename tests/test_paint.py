"""Painting predictions into VAST segmentation layers, against a real mock server process.

The prediction is a membrane map derived from the synthetic volume's exact ground truth
(the server serves the same synthetic volume), written as an 8-bit TIFF or as prediction
tiles that VAST loads as a layer.
"""

import json

import numpy as np
import pytest
import tifffile

from membrane_py.codes import palette_rgb
from membrane_py.edit.paint import PaintJob, compose, run_paint
from membrane_py.events import JobWarning
from membrane_py.geometry import Box
from membrane_py.predict.job import RegionSpec
from membrane_py.segment.instances import (
    InstanceConfig,
    membrane_map_from_labels,
    segment_stack,
    to_probability,
)
from membrane_py.vastapi.client import VastClient, pack_color
from membrane_py.volumes.base import ArrayVolume
from membrane_py.volumes.synthetic import make_synthetic
from membrane_py.volumes.tiles import TileWriter
from mock_vast_server.launch import start_server

VOLUME = "synthetic:8x256x256"
CFG = InstanceConfig(h=0.1)
NODES = [(60, 70, 2), (200, 180, 5)]


@pytest.fixture(scope="module")
def prob_u8():
    s = make_synthetic((8, 256, 256), seed=0)  # what the server serves for VOLUME
    return (1 + membrane_map_from_labels(s.instances, seed=3) * 254).astype(np.uint8)


@pytest.fixture(scope="module")
def prob_file(tmp_path_factory, prob_u8):
    path = tmp_path_factory.mktemp("prob") / "prob.tif"
    tifffile.imwrite(path, prob_u8, photometric="minisblack")
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paint_server")
    skeleton = {"objects": [{"name": "axon", "nodes": [
        {"id": 0, "x": NODES[0][0], "y": NODES[0][1], "z": NODES[0][2], "parent": None},
        {"id": 1, "x": NODES[1][0], "y": NODES[1][1], "z": NODES[1][2], "parent": 0}]}]}
    (folder / "skel.json").write_text(json.dumps(skeleton))
    with start_server(VOLUME, skeletons=folder / "skel.json", state_dir=folder / "state",
                      allow_load=[tmp_path_factory.getbasetemp()]) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with VastClient(server.host, server.port) as c:
        yield c


def job(server, source, **kw) -> PaintJob:
    return PaintJob(source, vast=f"vast://{server.host}:{server.port}", instances=CFG, **kw)


def expected_instances(prob_u8, box: Box) -> np.ndarray:
    return segment_stack(to_probability(prob_u8[box.slices()]), CFG)


def test_paint_instances_reads_back_with_segments(server, client, prob_file, prob_u8):
    box = Box(2, 4, 0, 128, 0, 160)
    result = run_paint(job(server, prob_file, region=RegionSpec("box", [0, 159, 0, 127, 2, 3])),
                       client=client)
    assert result.regions == [box]
    client.set_selected_api_layer(result.layer)
    painted = client.get_seg_image(box)
    ours = expected_instances(prob_u8, box)
    assert np.array_equal(painted > 0, ours > 0)
    lut = np.zeros(ours.max() + 1, np.int64)
    lut[list(result.mapping)] = list(result.mapping.values())
    np.testing.assert_array_equal(painted, lut[ours])
    assert len(set(result.mapping.values())) == len(result.mapping) == ours.max()
    # the segment table: a parent for the run, then one named, coloured segment per id
    names = client.get_all_segment_names()
    data = client.get_all_segment_data()
    assert len(names) == 2 + ours.max() == result.segments_created + 1
    parent = min(result.mapping.values()) - 1
    assert names[parent].startswith("membrane-py instances2d")
    for source_id, sid in list(result.mapping.items())[:5]:
        assert names[sid] == f"cell {source_id}"
        assert data[sid]["parent"] == parent
        assert data[sid]["col1"] == pack_color(*(int(c) for c in palette_rgb(source_id)))
    assert result.voxels_written == np.count_nonzero(ours)


def test_existing_paint_survives(server, client, prob_file, prob_u8):
    layer = client.add_new_layer(2, "user work", ref=client.get_number_of_layers() - 1)
    client.set_api_layers_enabled(True)
    client.set_selected_api_layer(layer)
    user = client.add_segment("user axon")
    stroke = Box(1, 2, 20, 60, 30, 90)
    client.set_seg_image(stroke, np.full(stroke.shape, user, np.uint16))
    region = RegionSpec("box", [0, 127, 0, 127, 1, 1])
    result = run_paint(job(server, prob_file, region=region, layer=layer), client=client)
    box = Box(1, 2, 0, 128, 0, 128)
    painted = client.get_seg_image(box)
    ours = expected_instances(prob_u8, box)
    assert (painted[stroke.relative_to(box).slices()] == user).all()
    outside = np.ones(box.shape, bool)
    outside[stroke.relative_to(box).slices()] = False
    assert np.array_equal(painted[outside] > 0, ours[outside] > 0)
    assert result.voxels_kept == np.count_nonzero(ours[~outside])
    # asked to overwrite: our ids replace the user's, our 0s still erase nothing
    run_paint(job(server, prob_file, region=region, layer=layer, overwrite=True), client=client)
    client.set_selected_api_layer(layer)
    again = client.get_seg_image(stroke)
    under = ours[stroke.relative_to(box).slices()]
    assert (again[under == 0] == user).all() and not (again[under > 0] == user).any()


def test_job_json_round_trip(server):
    spec = job(server, "probs.vsvi", mode="instances3d", mip=2,
               region=RegionSpec("nodes", size_xy=256, depth=4))
    assert PaintJob.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="mode"):
        job(server, "p.tif", mode="paint")
    with pytest.raises(ValueError, match="same VAST"):
        job(server, "vast://127.0.0.1:1")


def test_large_write_after_small_requests(client):
    """A write larger than the server's first request buffer, on a connection that already
    carried requests (the mock server used to drop the connection here)."""
    layer = client.add_new_layer(2, "big write", ref=client.get_number_of_layers() - 1)
    client.set_api_layers_enabled(True)
    client.set_selected_api_layer(layer)
    box = Box(0, 2, 0, 256, 0, 256)
    ids = np.arange(box.size, dtype=np.uint32).reshape(box.shape) % 60000 + 1
    assert client.set_seg_image(box, ids.astype(np.uint16)) == "raw"
    np.testing.assert_array_equal(client.get_seg_image(box), ids)


def test_compose_rule():
    existing = np.array([0, 0, 5, 5])
    new = np.array([0, 3, 0, 3])
    assert compose(existing, new).tolist() == [False, True, False, False]
    assert compose(existing, new, overwrite=True).tolist() == [False, True, False, True]


def test_view_region_at_mip1_scales_and_matches_windows(server, client, prob_file, prob_u8):
    client.set_view_coordinates(101, 121, 4)
    region = RegionSpec("view", size_xy=64, depth=2)
    result = run_paint(job(server, prob_file, mode="mask", region=region, mip=1, threshold=0.5,
                           class_name="membrane"), client=client)
    # mip-0 cube x 69..133, y 89..153, z 3..5 -> mip 1 x 34..67, y 44..77 -> mip 0 again
    assert result.regions == [Box(3, 5, 44, 77, 34, 67)]
    client.set_selected_api_layer(result.layer)
    whole = client.get_seg_image(Box(0, 8, 0, 256, 0, 256))
    z, y, x = np.nonzero(whole)
    assert z.min() >= 3 and z.max() <= 4 and y.min() >= 88 and y.max() < 154
    assert x.min() >= 68 and x.max() < 134
    block = whole[3:5, 88:154, 68:134]
    assert (block[:, ::2, ::2] == block[:, 1::2, 1::2]).all()  # each mip-1 pixel is 2x2
    mip1 = ArrayVolume(prob_u8).read(result.regions[0], 1)  # the file source's mip rule
    assert np.array_equal(block[:, ::2, ::2] > 0, to_probability(mip1) >= 0.5)
    assert len(np.unique(block)) == 2 and result.segments_created == 2  # parent + membrane
    assert client.get_all_segment_names()[int(block.max())] == "membrane"


def test_skeleton_nodes_region(server, client, prob_file):
    region = RegionSpec("nodes", size_xy=32, depth=1, anno_layer=2)
    result = run_paint(job(server, prob_file, region=region), client=client)
    assert len(result.regions) == 2
    client.set_selected_api_layer(result.layer)
    whole = client.get_seg_image(Box(0, 8, 0, 256, 0, 256))
    inside = np.zeros(whole.shape, bool)
    for x, y, z in NODES:
        inside[z, y - 16:y + 16, x - 16:x + 16] = True
        assert whole[z, y - 16:y + 16, x - 16:x + 16].any()
    assert not whole[~inside].any()


def test_vast_layer_source(server, client, prob_u8, tmp_path):
    writer = TileWriter(tmp_path / "tiles", prob_u8.shape, tile=128)
    writer.write_block(Box.full(prob_u8.shape), prob_u8)
    layer = client.load_layer(str(writer.write_descriptor(tmp_path / "tiles" / "p.vsvi",
                                                          (40, 8, 8), "membrane prediction")))
    address = f"vast://{server.host}:{server.port}"
    result = run_paint(job(server, address, source_layer=layer, mode="mask", threshold=0.5,
                           region=RegionSpec("box", [0, 255, 0, 255, 6, 6])), client=client)
    client.set_selected_api_layer(result.layer)
    painted = client.get_seg_image(Box(6, 7, 0, 256, 0, 256))
    np.testing.assert_array_equal(painted > 0, to_probability(prob_u8[6:7]) >= 0.5)


def test_large_ids_remapped_with_warning(server, client, tmp_path):
    ids = np.zeros((8, 256, 256), np.uint32)
    ids[0, 10:30, 10:30] = 70_000
    ids[0, 40:60, 10:30] = 123_456
    ids[0, 70:90, 10:30] = 5
    tifffile.imwrite(tmp_path / "ids.tif", ids, photometric="minisblack")
    with pytest.warns(JobWarning, match="123456"):
        result = run_paint(job(server, str(tmp_path / "ids.tif"), mode="labels",
                               region=RegionSpec("box", [0, 99, 0, 99, 0, 0])), client=client)
    assert sorted(result.mapping) == [5, 70_000, 123_456]
    client.set_selected_api_layer(result.layer)
    painted = client.get_seg_image(Box(0, 1, 0, 100, 0, 100))[0]
    for source_id, (y, x) in ((70_000, (20, 20)), (123_456, (50, 20)), (5, (80, 20))):
        sid = result.mapping[source_id]
        assert painted[y, x] == sid <= 0xFFFF
        assert client.get_all_segment_names()[sid] == f"label {source_id}"
    assert np.count_nonzero(painted) == 3 * 400


def test_restart_keeps_paint(tmp_path, prob_file, prob_u8):
    state = tmp_path / "state"
    with start_server(VOLUME, state_dir=state) as srv, VastClient(srv.host, srv.port) as c:
        result = run_paint(job(srv, prob_file, region=RegionSpec("box", [0, 99, 0, 99, 0, 1])),
                           client=c)
        before = c.get_seg_image(Box(0, 2, 0, 100, 0, 100))
        names = c.get_all_segment_names()
    assert before.any()
    with start_server(VOLUME, state_dir=state) as srv, VastClient(srv.host, srv.port) as c:
        c.set_api_layers_enabled(True)
        c.set_selected_api_layer(result.layer)
        np.testing.assert_array_equal(c.get_seg_image(Box(0, 2, 0, 100, 0, 100)), before)
        assert c.get_all_segment_names() == names
