"""Predictions appear correctly in VAST (issue 11, item 7): the descriptor of a box run puts
its tiles at the sections they were predicted for, REFRESHLAYERREGION goes out as tiles
land (golden bytes from the protocol notes, for the client and the bundled server), and a
rerun reuses its layer instead of adding another one of the same name."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import read_png
from membrane_py.geometry import Box
from membrane_py.vastapi.client import VastClient, VastError
from membrane_py.vastapi.descriptors import format_tile_path
from membrane_py.volumes.tiles import VsviVolume
from mock_vast_server.launch import start_server
from tests.predict_support import loading_server

SPEC = "synthetic:6x256x384"
#: REFRESHLAYERREGION (32) of layer 2, box x 0..99, y 10..19, z 3..4, written by hand from
#: the protocol notes: 'VAST', L = 4 + 7 * 5 = 39, command 32, seven tagged uint32
REFRESH_REQUEST = bytes.fromhex(
    "56415354" "2700000000000000" "20000000"
    "0102000000" "0100000000" "0163000000" "010A000000" "0113000000" "0103000000" "0104000000")
EMPTY_SUCCESS = bytes.fromhex("56415354" "0400000000000000" "01000000")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with loading_server(SPEC, tmp_path_factory) as srv:
        yield srv


def _recv_frame(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 12:
        head += sock.recv(12 - len(head))
    (length,) = struct.unpack_from("<Q", head, 4)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return head + body


def test_client_sends_golden_refresh_request():
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            got.append(_recv_frame(conn))
            conn.sendall(EMPTY_SUCCESS)

    t = threading.Thread(target=serve)
    t.start()
    with VastClient("127.0.0.1", listener.getsockname()[1]) as c:
        c.refresh_layer_region(2, Box.from_vast(0, 99, 10, 19, 3, 4))
    t.join(5)
    listener.close()
    assert got == [REFRESH_REQUEST]


def test_server_answers_golden_refresh(server):
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(REFRESH_REQUEST.replace(bytes.fromhex("0102000000"), bytes.fromhex("0100000000"),
                                          1))  # layer 0: the served EM
        assert _recv_frame(s) == EMPTY_SUCCESS
    assert re.search(r"REFRESHLAYERREGION layer 0 .*x 0\.\.99, y 10\.\.19, z 3\.\.4",
                     server.stderr)
    with VastClient(server.host, server.port) as c:
        with pytest.raises(VastError, match="error 30"):
            c.refresh_layer_region(99, Box(0, 1, 0, 1, 0, 1))
        with pytest.raises(VastError, match="error 10"):  # outside the volume
            c.refresh_layer_region(0, Box(0, 1, 0, 1, 0, 9999))


def test_box_run_descriptor_places_tiles_at_their_sections(tmp_path, checkpoint):
    """A box at sections 3..4: the descriptor spans the whole volume with OffsetZ 0, so by
    the protocol notes' reading (z index k is section SourceMinS + k) VAST's z 3 is the file
    of section 3; nothing is shifted twice."""
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, [
        "predict", str(checkpoint), "--source", SPEC, "--out", str(out), "--box",
        "130,250,20,100,3,4", "--tile", "128", "--chunk", "128,128,2", "--margin", "16",
        "--no-skip-blank", "--no-pyramid"])
    assert result.exit_code == 0, result.output
    raw = json.loads((out / "probability.vsvi").read_text())
    assert (raw["SourceMinS"], raw["SourceMaxS"]) == (0, 5)  # the volume's 6 sections
    assert (raw["OffsetX"], raw["OffsetY"], raw["OffsetZ"]) == (0, 0, 0)
    assert (raw["TargetDataSizeX"], raw["TargetDataSizeY"], raw["TargetDataSizeZ"]) == (384, 256, 6)
    x, y, z = 200, 50, 3  # a voxel inside the box, at mip 0
    section = raw["SourceMinS"] + z - raw["OffsetZ"]
    row = y // raw["SourceTileSizeY"] + raw["SourceMinR"]
    col = x // raw["SourceTileSizeX"] + raw["SourceMinC"]
    rel = format_tile_path(raw["SourceFileNameTemplate"], raw["SourceParamSequence"],
                           s=section, r=row, c=col)
    tile = read_png(out / rel)
    assert tile is not None and rel.endswith("Sect_000003/sect_000003_r0_c1.png")
    assert tile[y % 128, x % 128] > 0  # predicted (0 means missing)
    vol = VsviVolume(out / "probability.vsvi")  # our reader agrees with that placement
    assert vol.read(Box(z, z + 1, y, y + 1, x, x + 1))[0, 0, 0] == tile[y % 128, x % 128]
    assert not vol.read(Box(0, 3, 0, 256, 0, 384)).any()  # no section before the box


def test_load_refreshes_as_tiles_land_and_reruns_reuse_the_layer(tmp_path, server, checkpoint):
    address = f"vast://{server.host}:{server.port}"
    args = ["predict", str(checkpoint), "--source", address, "--out", str(tmp_path / "p"),
            "--load", "--tile", "128", "--chunk", "128,128,2", "--margin", "16",
            "--no-skip-blank", "--layer-name", "refresh test"]
    with VastClient(server.host, server.port) as c:
        before = c.get_layer_names()
    first = CliRunner().invoke(app, args + ["--box", "0,255,0,127,0,3"])
    assert first.exit_code == 0, first.output
    refreshes = re.findall(r"REFRESHLAYERREGION layer (\d+) \(refresh test\): "
                           r"x (\d+)\.\.(\d+), y (\d+)\.\.(\d+), z (\d+)\.\.(\d+)", server.stderr)
    assert refreshes  # sent while and after the tiles landed
    covered = np.zeros((6, 256, 384), bool)
    for _, x0, x1, y0, y1, z0, z1 in refreshes:
        x0, x1, y0, y1, z0, z1 = map(int, (x0, x1, y0, y1, z0, z1))
        covered[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = True
    assert covered[0:4, 0:128, 0:256].all()  # every predicted voxel was refreshed
    with VastClient(server.host, server.port) as c:
        names = c.get_layer_names()
    assert len(names) == len(before) + 1 and names.count("refresh test") == 1
    layer = names.index("refresh test")
    assert f"loaded into VAST as layer(s) {layer}" in first.output

    second = CliRunner().invoke(app, args + ["--box", "256,383,128,255,4,5"])
    assert second.exit_code == 0, second.output
    with VastClient(server.host, server.port) as c:
        again = c.get_layer_names()
        shown = c.get_em_image(layer, Box(4, 6, 128, 256, 256, 384))
    assert again == names  # the same layer, not a second one of the same name
    assert f"loaded into VAST as layer(s) {layer}" in second.output
    assert shown.min() > 0  # the second run's tiles show through the reused layer

    # a changed descriptor (here the voxel size) is loaded afresh in place of the old layer
    third = CliRunner().invoke(app, args + ["--box", "0,127,0,127,5,5", "--voxel-size", "4",
                                            "4", "30"])
    assert third.exit_code == 0, third.output
    with VastClient(server.host, server.port) as c:
        assert c.get_layer_names() == names
    assert f"loaded into VAST as layer(s) {layer}" in third.output
    record = json.loads((tmp_path / "p" / "vast_layers.json").read_text())
    entry = record[f"{server.host}:{server.port}"]["probability.vsvi"]
    descriptor = (tmp_path / "p" / "probability.vsvi").read_bytes()
    assert entry["sha256"] == hashlib.sha256(descriptor).hexdigest()  # loaded anew
    assert b'"TargetVoxelSizeZnm": 30.0' in descriptor


def test_a_refused_load_names_the_servers_allow_load_option(tmp_path, checkpoint):
    """A server that may not read the output folder: one line naming --allow-load, exit 2."""
    with start_server(SPEC, state_dir=tmp_path / "state") as srv:
        result = CliRunner().invoke(app, [
            "predict", str(checkpoint), "--source", f"vast://{srv.host}:{srv.port}",
            "--out", str(tmp_path / "p"), "--load", "--tile", "128", "--chunk", "128,128,2",
            "--box", "0,127,0,127,0,1"])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert "error 32" in last and f"--allow-load {tmp_path / 'p'}" in last
    assert "Traceback" not in result.output
