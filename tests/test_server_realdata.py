"""The mock VAST server over the real shared EM data (skipped when ../shared/data is absent)."""

from __future__ import annotations

import gzip
import io

import cv2
import h5py
import numpy as np
import pytest

from membrane_py.vastapi.protocol import Cmd, Grouped, decode_values, i32, pack_box, u32
from mock_vast_server.launch import raw_request, start_server

pytestmark = pytest.mark.realdata


def ok_payload(sock, cmd, params=()):
    ok, payload = raw_request(sock, cmd, params)
    assert ok, f"command {cmd} failed"
    return payload


def select_ground_truth(sock) -> None:
    n = Grouped.of(decode_values(ok_payload(sock, Cmd.GETNROFLAYERS))).uints[0]
    names = [Grouped.of(decode_values(ok_payload(sock, Cmd.GETLAYERINFO, [u32(i)]))).texts[0]
             for i in range(n)]
    ok_payload(sock, Cmd.SETAPILAYERSENABLED, [u32(1)])
    ok_payload(sock, Cmd.SETSELECTEDAPILAYERNR, [i32(names.index("ground truth"))])


def test_isbi2012_images_and_labels(shared_data, tmp_path):
    root = shared_data / "isbi2012"
    with start_server(str(root / "images"), labels=str(root / "labels"),
                      state_dir=tmp_path / "state") as srv, srv.connect() as s:
        info = Grouped.of(decode_values(ok_payload(s, Cmd.GETINFO)))
        assert info.uints[:3] == [512, 512, 20]
        files = sorted((root / "images").iterdir())
        png = cv2.imread(str(files[7]), cv2.IMREAD_UNCHANGED)
        got = ok_payload(s, Cmd.GETEMIMAGERAW, [u32(0)] + pack_box(0, (0, 511, 0, 511, 7, 7)))
        np.testing.assert_array_equal(np.frombuffer(got, np.uint8).reshape(512, 512), png)
        select_ground_truth(s)
        lab = cv2.imread(str(sorted((root / "labels").iterdir())[7]), cv2.IMREAD_UNCHANGED)
        got = ok_payload(s, Cmd.GETSEGIMAGERAW, pack_box(0, (100, 299, 50, 149, 7, 7)))
        np.testing.assert_array_equal(np.frombuffer(got, "<u2").reshape(100, 200),
                                      lab[50:150, 100:300])


def test_fib25_fragment_ids(shared_data, tmp_path):
    root = shared_data / "fib25_sample2"
    with start_server(str(root / "grayscale"), labels=f"{root / 'groundtruth.h5.gz'}:stack",
                      state_dir=tmp_path / "state", timeout=120) as srv, srv.connect() as s:
        info = Grouped.of(decode_values(ok_payload(s, Cmd.GETINFO)))
        assert info.uints[:3] == [250, 250, 250]
        select_ground_truth(s)
        with h5py.File(io.BytesIO(gzip.open(root / "groundtruth.h5.gz").read())) as f:
            expect = f["stack"][100:120, 30:90, 40:160]
        got = ok_payload(s, Cmd.GETSEGIMAGERAW, pack_box(0, (40, 159, 30, 89, 100, 119)))
        np.testing.assert_array_equal(np.frombuffer(got, "<u2").reshape(20, 60, 120), expect)
        n = int.from_bytes(ok_payload(s, Cmd.GETALLSEGMENTDATA)[:4], "little")
        assert n == 21317  # one record per fragment id 0..21316
