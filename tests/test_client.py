"""End to end: VastClient against a real mock_vast_server process on a real socket."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

from membrane_py.geometry import Box
from membrane_py.vastapi.client import VastClient, VastError, pack_color
from membrane_py.volumes.base import downsample_xy
from membrane_py.volumes.blocks import iter_chunks
from membrane_py.volumes.synthetic import synthetic_volumes
from membrane_py.volumes.vast import VastVolume

launch = pytest.importorskip("mock_vast_server.launch")

SHAPE = (4, 96, 128)
SEED = 3
SPEC = f"synthetic:{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}:{SEED}"


@pytest.fixture(scope="module")
def source():
    return synthetic_volumes(SHAPE, SEED)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launch.start_server(volume=SPEC, labels=SPEC,
                             state_dir=tmp_path_factory.mktemp("vast_state"),
                             allow_load=[tmp_path_factory.getbasetemp()]) as srv:
        yield srv


@pytest.fixture
def client(server):
    with VastClient(server.host, server.port, timeout=20.0) as c:
        yield c


def _seg_layer(client: VastClient) -> int:
    client.set_api_layers_enabled(True)
    seg = client.get_selected_api_layers().segmentation
    assert seg >= 0, "server started with labels must have a segmentation layer"
    client.set_selected_api_layer(seg)
    return seg


def test_info_and_layers(client, source):
    em, _ = source
    info = client.get_info()
    assert info.data_size == SHAPE
    assert info.voxel_size == pytest.approx(em.voxel_size)
    assert info.n_mips == em.n_mips >= 3
    assert info.size_at(2) == (4, 24, 32)
    assert len(info.view) == 3
    n = client.get_number_of_layers()
    assert n >= 2
    layer0 = client.get_layer_info(0)
    assert layer0.bytes_per_pixel == 1
    assert client.get_layer_names()[0] == layer0.name
    factors = client.get_mipmap_scale_factors(0)
    assert factors.shape == (info.n_mips, 3)
    assert factors[:, 0].tolist() == [1 << m for m in range(info.n_mips)]
    assert isinstance(client.get_api_version(), int)


@pytest.mark.parametrize("mip", [0, 1, 2])
def test_em_reads_equal_source_at_mips(client, source, mip):
    em, _ = source
    expected = downsample_xy(em.array, 1 << mip, labels=False)
    full = Box.full(expected.shape)
    got = client.get_em_image(0, full, mip)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    sub = Box(1, 3, 5, 17, 3, 30)
    np.testing.assert_array_equal(client.get_em_image(0, sub, mip), expected[sub.slices()])
    out = np.empty(sub.shape, np.uint8)
    assert client.get_em_image(0, sub, mip, out=out) is out
    np.testing.assert_array_equal(out, expected[sub.slices()])


def test_vast_volume(client, source):
    em, labels = source
    vol = VastVolume(client, 0)
    assert vol.shape == SHAPE and vol.dtype == np.uint8 and vol.channels == 1
    assert vol.n_mips == em.n_mips and vol.voxel_size == pytest.approx(em.voxel_size)
    box = Box(0, 2, 0, 24, 0, 32)
    np.testing.assert_array_equal(vol.read(box, 2), em.read(box, 2))
    with pytest.raises(IndexError, match="outside"):
        vol.read(Box(0, 1, 0, 25, 0, 1), 2)
    _seg_layer(client)
    seg = VastVolume(client, segmentation=True)
    assert seg.dtype == np.uint16 and seg.is_label
    np.testing.assert_array_equal(seg.read(Box.full(SHAPE)), labels.array.astype(np.uint16))


def test_iter_chunks_over_client_equals_source(client, source):
    em, _ = source
    out = np.zeros(SHAPE, np.uint8)
    n = 0
    for c in iter_chunks(lambda b: client.get_em_image(0, b), Box.full(SHAPE), SHAPE,
                         chunk=(2, 40, 50), margin=(0, 8, 8), prefetch=2):
        np.testing.assert_array_equal(c.data, em.array[c.outer.slices()])
        out[c.core.slices()] = c.core_data()
        n += 1
    assert n == 2 * 3 * 3
    np.testing.assert_array_equal(out, em.array)


def test_seg_round_trip_raw_and_rle(client, source):
    _, labels = source
    _seg_layer(client)
    full = Box.full(SHAPE)
    np.testing.assert_array_equal(client.get_seg_image(full), labels.array)
    np.testing.assert_array_equal(client.get_seg_image_rle(full), labels.array)
    np.testing.assert_array_equal(client.get_seg_image(Box(0, 4, 0, 48, 0, 64), 1),
                                  downsample_xy(labels.array, 2, labels=True))

    box = Box(1, 3, 10, 42, 20, 60)
    sparse = np.zeros(box.shape, np.uint16)
    sparse[:, 4:20, 5:25] = 4465
    assert client.set_seg_image(box, sparse, method="auto") == "rle"
    np.testing.assert_array_equal(client.get_seg_image(box), sparse)

    noisy = np.random.default_rng(0).integers(1, 60000, box.shape, dtype=np.uint16)
    assert client.set_seg_image(box, noisy, method="auto") == "raw"
    np.testing.assert_array_equal(client.get_seg_image_rle(box), noisy)
    # forced RLE that is larger than raw: VAST may refuse with error 22, then raw is used
    assert client.set_seg_image(box, noisy[::-1].copy(), method="rle") in ("rle", "raw")
    np.testing.assert_array_equal(client.get_seg_image(box), noisy[::-1])

    with pytest.raises(ValueError, match="0..65535"):
        client.set_seg_image(box, np.full(box.shape, 70000, np.uint32))
    with pytest.raises(ValueError, match="do not match"):
        client.set_seg_image(box, sparse[:1])


def test_segments(client):
    _seg_layer(client)
    n = client.get_number_of_segments()
    table = client.get_all_segment_data()
    names = client.get_all_segment_names()
    assert len(table) == len(names) == n and names[0] == "Background"
    new = client.add_segment("my cell")
    assert new == n and client.get_number_of_segments() == n + 1
    client.set_segment_name(new, "renamed")
    client.set_segment_color_rgb(new, (10, 20, 30), pattern=1)
    data = client.get_segment_data(new)
    assert data.id == new and data.col1 == pack_color(10, 20, 30, 1) == 0x0A141E01
    assert client.get_all_segment_names()[new] == "renamed"
    assert client.get_all_segment_data()[new]["col2"] == data.col2
    client.set_selected_segment(new)
    assert client.get_selected_segment() == new


def test_view(client):
    client.set_view_coordinates(10, 20, 3)
    assert client.get_view_coordinates() == (10, 20, 3)
    assert client.get_info().view == (10, 20, 3)
    client.set_view_zoom(-2)
    assert client.get_view_zoom() == -2


def test_errors_carry_codes_and_keep_the_connection(client):
    with pytest.raises(VastError) as err:
        client.get_em_image(0, Box(0, 1, 0, 2, 0, 2), mip=20)
    assert err.value.code == 11 and err.value.command == "GETEMIMAGERAW"
    assert str(err.value) == "VAST GETEMIMAGERAW failed: error 11 (mip level out of bounds)"
    with pytest.raises(VastError) as err:
        client.get_em_image(0, Box(0, 1, 0, 2, 0, SHAPE[2] + 1))
    assert err.value.code == 10
    with pytest.raises(VastError) as err:
        client.get_layer_info(999)
    assert err.value.code == 30 and err.value.meaning == "invalid layer number"
    assert client.get_info().data_size == SHAPE  # same connection still in step


def test_reply_size_mismatch_is_rejected_without_allocating(client, server):
    box = Box(0, 1, 0, 8, 0, 8)
    wrong = np.empty(box.shape, np.uint32)  # layer 0 sends 1 byte per voxel, not 4
    with pytest.raises(VastError) as err:
        client.get_em_image(0, box, out=wrong)
    assert err.value.code == 2 and not client.connected
    assert client.get_em_image(0, box).shape == box.shape  # reconnects on the next call
    small = VastClient(server.host, server.port, max_reply_bytes=16)
    with small, pytest.raises(VastError) as err:
        small.get_all_segment_names()
    assert err.value.code == 2 and "exceeds" in str(err.value)


def test_one_client_shared_between_threads(client, source):
    em, _ = source
    errors: list[BaseException] = []

    def work(z: int) -> None:
        try:
            for _ in range(10):
                box = Box(z, z + 1, 0, SHAPE[1], 0, SHAPE[2])
                np.testing.assert_array_equal(client.get_em_image(0, box), em.array[z:z + 1])
                assert client.get_info().data_size == SHAPE
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(z,)) for z in range(SHAPE[0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_skeleton_nodes(tmp_path):
    doc = {"objects": [
        {"name": "axon", "nodes": [
            {"id": 10, "x": 5, "y": 6, "z": 0, "parent": None},
            {"id": 11, "x": 7, "y": 8, "z": 1, "parent": 10},
            {"id": 12, "x": 9, "y": 10, "z": 2, "parent": 10},
            {"id": 13, "x": 11, "y": 12, "z": 3, "parent": 11},
        ]},
        {"name": "dendrite", "nodes": [{"id": 1, "x": 50, "y": 40, "z": 2, "parent": None}]},
    ]}
    path = tmp_path / "skel.json"
    path.write_text(json.dumps(doc))
    with launch.start_server(volume=SPEC, skeletons=str(path), state_dir=tmp_path / "st") as srv, \
            VastClient(srv.host, srv.port) as c:
        c.set_api_layers_enabled(True)
        assert c.get_api_layers_enabled()
        anno = c.get_selected_api_layers().annotation
        assert anno >= 0
        c.set_selected_api_layer(anno)
        assert c.get_anno_layer_number_of_objects()[0] == 2
        assert c.get_anno_object_names() == ["axon", "dendrite"]
        objects = c.get_anno_object_data()
        assert [o.id for o in objects] == [1, 2] and [o.type for o in objects] == [1, 1]
        assert objects[0].anchor == (5, 6, 0) and objects[1].anchor == (50, 40, 2)
        c.set_selected_anno_object(1)
        assert c.get_selected_anno_object() == 1
        nodes = c.get_ao_node_data()
        # depth first: 10, 11, 13, 12
        assert [(n.x, n.y, n.z) for n in nodes] == [(5, 6, 0), (7, 8, 1), (11, 12, 3), (9, 10, 2)]
        assert [n.dfs_nr for n in nodes] == [0, 1, 2, 3]
        assert [n.parent for n in nodes] == [-1, 0, 1, 0]
        assert nodes[0].child == 1 and nodes[1].next == 3 and nodes[3].next == -1
        c.add_ao_node(20, 21, 1)
        after = c.get_ao_node_data()
        assert len(after) == 5 and (20, 21, 1) in [(n.x, n.y, n.z) for n in after]
        assert c.get_selected_ao_node() in range(5)


def test_load_written_vsvi_layer(client, source, tmp_path):
    tiles = pytest.importorskip("membrane_py.volumes.tiles")
    em, _ = source
    data = (255 - em.array).astype(np.uint8)
    writer = tiles.TileWriter(tmp_path / "tiles", SHAPE, mip=0, tile=64)
    writer.write_block(Box.full(SHAPE), data)
    vsvi = writer.write_descriptor(tmp_path / "pred.vsvi", em.voxel_size, "prediction")
    n_before = client.get_number_of_layers()
    nr = client.load_layer(str(vsvi))
    assert client.get_number_of_layers() == n_before + 1
    assert client.get_layer_info(nr).name == "prediction"
    np.testing.assert_array_equal(client.get_em_image(nr, Box.full(SHAPE)), data)
    client.remove_layer(nr)
    assert client.get_number_of_layers() == n_before


def test_add_save_remove_layer(client):
    n = client.get_number_of_layers()
    nr = client.add_new_layer(2, "paint")
    assert client.get_number_of_layers() == n + 1 and client.get_layer_info(nr).name == "paint"
    client.set_selected_layer(nr)
    assert client.get_selected_layers().selected == nr
    client.save_layer(nr)
    client.remove_layer(nr)
    assert client.get_number_of_layers() == n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_message():
    port = _free_port()
    with pytest.raises(ConnectionError, match=f"Remote Control API Server enabled, on port {port}"):
        VastClient("127.0.0.1", port, connect_timeout=1.0).connect()


def test_reconnects_after_server_restart(tmp_path):
    port = _free_port()
    kw = dict(volume=SPEC, state_dir=tmp_path / "st", port=port)
    with launch.start_server(**kw) as srv:
        c = VastClient(srv.host, srv.port).connect()
        assert c.get_info().data_size == SHAPE
    with pytest.raises(ConnectionError):
        c.get_info()  # nothing listens now: a clear error, not a hang
    with launch.start_server(**kw):
        assert c.get_info().data_size == SHAPE  # read on a fresh connection
        c.set_view_coordinates(1, 2, 3)  # a write after a restart also gets a fresh connection
        assert c.get_view_coordinates() == (1, 2, 3)
    c.close()
