"""The mock VAST server as a real process on a real socket, spoken to in raw protocol bytes."""

from __future__ import annotations

import json
import struct
import threading

import numpy as np
import pytest

from membrane_py.geometry import Box
from membrane_py.vastapi.protocol import (
    Cmd,
    Grouped,
    block,
    decode_values,
    error_code_of,
    i32,
    pack_box,
    text,
    u32,
    u64,
)
from membrane_py.vastapi.rle import rle_decode, rle_encode
from membrane_py.volumes import open_volume
from mock_vast_server.launch import raw_request, start_server

SPEC = "synthetic:8x256x256"


def call(sock, cmd, params=()):
    """Typed reply values grouped by type; fails the test on an error reply."""
    ok, payload = raw_request(sock, cmd, params)
    assert ok, f"command {cmd} failed with code {error_code_of(payload)}"
    return Grouped.of(decode_values(payload))


def bulk(sock, cmd, params=()):
    ok, payload = raw_request(sock, cmd, params)
    assert ok, f"command {cmd} failed with code {error_code_of(payload)}"
    return payload


def error(sock, cmd, params=()):
    ok, payload = raw_request(sock, cmd, params)
    assert not ok, f"command {cmd} unexpectedly succeeded"
    return error_code_of(payload)


def new_seg_layer(sock, name="paint"):
    """Add an empty XY-mip segmentation layer and make it the API target."""
    nr = call(sock, Cmd.ADDNEWLAYER, [i32(2), i32(-1), text(name)]).uints[0]
    call(sock, Cmd.SETAPILAYERSENABLED, [u32(1)])
    call(sock, Cmd.SETSELECTEDAPILAYERNR, [i32(nr)])
    return nr


@pytest.fixture(scope="module")
def em():
    return open_volume(SPEC)


@pytest.fixture()
def sock(vast_server):
    s = vast_server.connect()
    yield s
    s.close()


def test_getinfo_reports_volume(sock, em):
    g = call(sock, Cmd.GETINFO)
    assert g.uints == [256, 256, 8, 16, 16, 16, em.n_mips]
    vz, vy, vx = em.voxel_size
    assert g.doubles == [vx, vy, vz]
    assert len(g.ints) == 3


def test_golden_frame_of_getinfo_reply(sock):
    """The reply is VAST | L | flag 1 | 7 tagged u32, 3 doubles, 3 int32 (5*10 + 9*3 bytes)."""
    from membrane_py.vastapi.protocol import encode_request
    from mock_vast_server.launch import recv_exact

    sock.sendall(encode_request(Cmd.GETINFO))
    head = recv_exact(sock, 16)
    assert head[:4] == b"VAST"
    assert struct.unpack("<Q", head[4:12])[0] == 4 + 7 * 5 + 3 * 9 + 3 * 5
    assert struct.unpack("<i", head[12:16])[0] == 1
    recv_exact(sock, 7 * 5 + 3 * 9 + 3 * 5)


@pytest.mark.parametrize("mip", [0, 1, 2])
def test_em_read_matches_source_downsampled(sock, em, mip):
    box = Box(2, 5, 0, 256 >> mip, 0, 256 >> mip)
    data = bulk(sock, Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(mip, box.to_vast()))
    got = np.frombuffer(data, np.uint8).reshape(box.shape)
    np.testing.assert_array_equal(got, em.read(box, mip))


def test_ground_truth_layer_and_segment_table(sock):
    labels = open_volume(SPEC, labels=True)
    layers = call(sock, Cmd.GETNROFLAYERS).uints[0]
    info = [call(sock, Cmd.GETLAYERINFO, [u32(i)]) for i in range(layers)]
    seg_nr = next(i for i, g in enumerate(info) if g.texts == ["ground truth"])
    assert info[seg_nr].ints[0] == 1  # segmentation type code
    assert info[0].ints[0] == 0 and info[0].uints[4] == 1  # image, 1 byte per pixel
    call(sock, Cmd.SETAPILAYERSENABLED, [u32(1)])
    call(sock, Cmd.SETSELECTEDAPILAYERNR, [i32(seg_nr)])
    box = Box(0, 3, 10, 90, 20, 120)
    got = np.frombuffer(bulk(sock, Cmd.GETSEGIMAGERAW, pack_box(0, box.to_vast())), "<u2")
    np.testing.assert_array_equal(got.reshape(box.shape), labels.read(box))
    raw = bulk(sock, Cmd.GETALLSEGMENTDATA)
    n = struct.unpack_from("<I", raw)[0]
    assert n == int(labels.read(Box.full(labels.shape)).max()) + 1
    rec = np.frombuffer(raw, "<i4", offset=4).reshape(n, 17)
    names = bulk(sock, Cmd.GETALLSEGMENTNAMES)[4:].split(b"\0")
    assert names[0] == b"Background" and names[5] == b"segment 5"
    full = labels.read(Box.full(labels.shape))
    zz, yy, xx = np.nonzero(full == 5)
    assert list(rec[5, 11:17]) == [xx.min(), yy.min(), zz.min(), xx.max(), yy.max(), zz.max()]
    ax, ay, az = rec[5, 3:6]
    assert full[az, ay, ax] == 5  # the anchor lies inside the segment
    assert len({tuple(rec[i, 1:2]) for i in range(1, n)}) > n // 2  # distinct colours


def test_seg_raw_and_rle_round_trip(sock):
    new_seg_layer(sock)
    rng = np.random.default_rng(3)
    box = Box(1, 3, 16, 48, 32, 96)
    ids = rng.integers(0, 40, box.shape).astype(np.uint16)
    call(sock, Cmd.SETSEGIMAGERAW, pack_box(0, box.to_vast()) + [block(ids.tobytes())])
    got = bulk(sock, Cmd.GETSEGIMAGERAW, pack_box(0, box.to_vast()))
    np.testing.assert_array_equal(np.frombuffer(got, "<u2").reshape(box.shape), ids)
    # RLE write of blocky labels, then RLE read back
    blocky = np.repeat(np.arange(8, dtype=np.uint16), box.size // 8).reshape(box.shape)
    rle = block(rle_encode(blocky).tobytes())
    call(sock, Cmd.SETSEGIMAGERLE, pack_box(0, box.to_vast()) + [rle])
    pairs = bulk(sock, Cmd.GETSEGIMAGERLE, pack_box(0, box.to_vast()))
    np.testing.assert_array_equal(rle_decode(pairs, box.size).reshape(box.shape), blocky)
    # random labels compress badly: RLE read refuses with 22
    call(sock, Cmd.SETSEGIMAGERAW, pack_box(0, box.to_vast()) + [block(ids.tobytes())])
    assert error(sock, Cmd.GETSEGIMAGERLE, pack_box(0, box.to_vast())) == 22


def test_paint_at_mip1_fills_blocks_at_mip0(sock):
    new_seg_layer(sock, "mip paint")
    small = np.array([[[7, 8], [9, 10]]], np.uint16)
    call(sock, Cmd.SETSEGIMAGERAW, pack_box(1, (4, 5, 4, 5, 2, 2)) + [block(small.tobytes())])
    got = bulk(sock, Cmd.GETSEGIMAGERAW, pack_box(0, (8, 11, 8, 11, 2, 2)))
    expect = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(np.frombuffer(got, "<u2").reshape(1, 4, 4), expect)
    g = call(sock, Cmd.GETSEGMENTDATA, [u32(10)])
    assert g.ints[3:] == [10, 10, 2, 11, 11, 2]  # bbox in mip-0 voxels


@pytest.mark.parametrize(
    ("cmd", "params", "code"),
    [
        (Cmd.GETEMIMAGERAW, [u32(99)] + pack_box(0, (0, 1, 0, 1, 0, 0)), 30),
        (Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(9, (0, 1, 0, 1, 0, 0)), 11),
        (Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(0, (0, 256, 0, 1, 0, 0)), 10),
        (Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(2, (0, 64, 0, 1, 0, 0)), 10),
        (Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(0, (5, 4, 0, 1, 0, 0)), 10),
        (Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(0, (0, 1, 0, 1, 0, 8)), 10),
        (Cmd.GETEMIMAGERAW, [u32(1)] + pack_box(0, (0, 1, 0, 1, 0, 0)), 31),
        (Cmd.SETSEGIMAGERAW, pack_box(0, (0, 1, 0, 1, 0, 0)) + [block(b"\0" * 6)], 13),
        (Cmd.SETSEGIMAGERLE, pack_box(0, (0, 1, 0, 1, 0, 0)) + [block(rle_encode(
            np.zeros(5, np.uint16)).tobytes())], 13),
        (Cmd.GETEMIMAGERAW, [i32(0)] + pack_box(0, (0, 1, 0, 1, 0, 0)), 3),
        (Cmd.GETINFO, [u32(1)], 3),
        (Cmd.GETLAYERINFO, [u32(50)], 30),
        (Cmd.GETSEGMENTDATA, [u32(60000)], 20),
        (Cmd.LOADLAYER, [i32(-1), text("/nonexistent/missing.vsvi")], 32),
        (4242, [], 1),
    ],
)
def test_errors_carry_the_right_codes(sock, cmd, params, code):
    call(sock, Cmd.SETAPILAYERSENABLED, [u32(0)])  # UI selection: the ground-truth layer
    assert error(sock, cmd, params) == code
    assert call(sock, Cmd.GETINFO).uints[0] == 256  # the connection still works


def test_two_clients_at_once(vast_server, em):
    box = Box(0, 8, 0, 256, 0, 256)
    expect = em.read(box).tobytes()
    results: list[bool] = []

    def fetch() -> None:
        s = vast_server.connect()
        try:
            for _ in range(5):
                results.append(bulk(s, Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(0, box.to_vast()))
                               == expect)
        finally:
            s.close()

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 15


def test_add_ao_node_builds_a_tree(sock):
    call(sock, Cmd.SETAPILAYERSENABLED, [u32(0)])
    oid = call(sock, Cmd.ADDNEWANNOOBJECT, [u32(0), u32(0), u32(1), text("traced")]).uints[0]
    call(sock, Cmd.SETSELECTEDANNOOBJECTNR, [u32(oid)])
    for xyz in [(10, 20, 1), (11, 21, 2), (12, 22, 3)]:
        call(sock, Cmd.ADDAONODE, [u32(v) for v in xyz])
    assert call(sock, Cmd.GETSELECTEDAONODENR).uints == [2]
    call(sock, Cmd.SETSELECTEDAONODEBYDFSNR, [u32(0)])
    call(sock, Cmd.ADDAONODE, [u32(50), u32(60), u32(7)])  # a second child of the root
    raw = bulk(sock, Cmd.GETAONODEDATA)
    n = struct.unpack_from("<I", raw)[0]
    w = np.frombuffer(raw, "<u4", offset=4).reshape(n, 12)
    none = 0xFFFFFFFF
    assert [tuple(r) for r in w[:, 1:4]] == [(10, 20, 1), (11, 21, 2), (12, 22, 3), (50, 60, 7)]
    assert list(w[:, 4]) == [none, 0, 1, 0]  # parents
    assert list(w[:, 5]) == [1, 2, none, none]  # first children
    assert list(w[:, 6]) == [none, 3, none, none]  # next siblings
    assert list(w[:, 0]) == [0, 0, 0, 1]  # the new node is selected
    names = bulk(sock, Cmd.GETANNOLAYEROBJECTNAMES)
    assert names[4:].split(b"\0")[oid - 1] == b"traced"
    assert error(sock, Cmd.ADDAONODE, [u32(999), u32(0), u32(0)]) == 10


def test_mipmap_scale_factors_and_selection(sock, em):
    raw = bulk(sock, Cmd.GETMIPMAPSCALEFACTORS, [u32(0)])
    rows = np.frombuffer(raw, "<u4", offset=4).reshape(-1, 3)
    assert struct.unpack_from("<I", raw)[0] == em.n_mips
    assert [tuple(r) for r in rows] == [(1 << m, 1 << m, 1) for m in range(em.n_mips)]
    call(sock, Cmd.SETSELECTEDLAYERNR, [i32(0)])
    g = call(sock, Cmd.GETSELECTEDLAYERNR)
    assert g.ints[0] == 0 and g.ints[1] == 0 and len(g.ints) == 5


def test_painting_and_skeletons_persist_across_restart(tmp_path):
    skel = tmp_path / "skel.csv"
    skel.write_text("object,node,x,y,z,parent\naxon,1,5,6,0,\naxon,2,7,8,1,1\n"
                    "axon,3,9,10,2,2\ndendrite,1,30,40,3,-1\n")
    state = tmp_path / "state"
    box = Box(0, 2, 0, 16, 0, 16)
    ids = np.arange(box.size, dtype=np.uint16).reshape(box.shape) % 300
    with start_server("synthetic:4x64x64", state_dir=state, skeletons=skel,
                      extra_args=["--max-bytes", "10000"]) as srv:
        s = srv.connect()
        assert call(s, Cmd.GETANNOLAYERNROFOBJECTS).uints == [2, 1]
        call(s, Cmd.SETSELECTEDANNOOBJECTNR, [u32(1)])
        raw = bulk(s, Cmd.GETAONODEDATA)
        w = np.frombuffer(raw, "<u4", offset=4).reshape(-1, 12)
        assert [tuple(r) for r in w[:, 1:4]] == [(5, 6, 0), (7, 8, 1), (9, 10, 2)]
        nr = new_seg_layer(s, "kept")
        call(s, Cmd.SETSEGIMAGERAW, pack_box(0, box.to_vast()) + [block(ids.tobytes())])
        call(s, Cmd.SETSEGMENTNAME, [u32(299), text("renamed")])
        assert error(s, Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(0, (0, 63, 0, 63, 0, 3))) == 12
        s.close()
    assert (state / "state.json").exists()
    json.loads((state / "state.json").read_text())
    with start_server("synthetic:4x64x64", state_dir=state) as srv:
        s = srv.connect()
        assert call(s, Cmd.GETLAYERINFO, [u32(nr)]).texts == ["kept"]
        assert call(s, Cmd.GETSELECTEDAPILAYERNR).ints[3] == nr
        got = bulk(s, Cmd.GETSEGIMAGERAW, pack_box(0, box.to_vast()))
        np.testing.assert_array_equal(np.frombuffer(got, "<u2").reshape(box.shape), ids)
        assert call(s, Cmd.GETSEGMENTNAME, [u32(299)]).texts == ["renamed"]
        call(s, Cmd.SETSELECTEDANNOOBJECTNR, [u32(2)])
        w = np.frombuffer(bulk(s, Cmd.GETAONODEDATA), "<u4", offset=4).reshape(-1, 12)
        assert [tuple(r) for r in w[:, 1:4]] == [(30, 40, 3)]
        s.close()


def test_skeleton_file_errors_name_the_line(tmp_path):
    from mock_vast_server.skeletons import SkeletonFileError, load_skeletons

    bad = tmp_path / "bad.csv"
    bad.write_text("object,node,x,y,z,parent\na,1,1,2,3,\na,2,1,2,3,7\n")
    with pytest.raises(SkeletonFileError, match=r"bad\.csv: line 3: node 2 names parent 7"):
        load_skeletons(bad)
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"objects": [{"name": "n", "nodes": [
        {"id": 4, "x": 1, "y": 2, "z": 3, "parent": None},
        {"id": 9, "x": 4, "y": 5, "z": 6, "parent": 4}]}]}))
    (sk,) = load_skeletons(js)
    assert [(n.x, n.y, n.z, n.parent) for n in sk.nodes] == [(1, 2, 3, -1), (4, 5, 6, 0)]


def test_load_layer_vsvi_reads_back_identical(vast_server, sock, em):
    from membrane_py.volumes import TileWriter

    folder = vast_server.state_dir / "loaded"  # LOADLAYER may read the state dir
    writer = TileWriter(folder / "tiles", em.shape, tile=128)
    writer.write_block(Box.full(em.shape), em.read(Box.full(em.shape)))
    writer.build_pyramid()
    vsvi = writer.write_descriptor(folder / "em.vsvi", em.voxel_size, "reloaded")
    nr = call(sock, Cmd.LOADLAYER, [i32(-1), text(str(vsvi))]).uints[0]
    assert call(sock, Cmd.GETLAYERINFO, [u32(nr)]).ints[0] == 0
    box = Box(0, 8, 0, 256, 0, 256)
    got = bulk(sock, Cmd.GETEMIMAGERAW, [u32(nr)] + pack_box(0, box.to_vast()))
    assert got == em.read(box).tobytes()
    call(sock, Cmd.REMOVELAYER, [u32(nr), u32(1)])
    assert error(sock, Cmd.GETLAYERINFO, [u32(call(sock, Cmd.GETNROFLAYERS).uints[0])]) == 30


@pytest.mark.parametrize(
    "params",
    [[u64(0)], [u32(0), u64(1)],
     [u32(1 << 0), u32(0), u64(1)]],  # SETLAYERINFO "editable" sent as a uint64
    ids=["alone", "extra", "setlayerinfo"],
)
def test_uint64_parameters_are_a_clean_parameter_error(vast_server, sock, params):
    cmd = Cmd.SETLAYERINFO if len(params) == 3 else Cmd.GETLAYERINFO
    assert error(sock, cmd, params) == 3
    assert call(sock, Cmd.GETINFO).uints[0] == 256
    assert "Traceback" not in vast_server.stderr
    assert "error 3" in vast_server.stderr.splitlines()[-1]
