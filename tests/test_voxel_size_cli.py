"""Voxel size and axis order (issue 11, item 6): a volume without voxel size metadata
warns and asks for --voxel-size X Y Z instead of silently writing 1 nm; --voxel-size is
taken in VAST's x, y, z order; VastInfo names its axes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.vastapi.client import VastClient
from membrane_py.vastapi.descriptors import read_vsvi
from membrane_py.volumes.open import open_volume
from membrane_py.volumes.synthetic import make_synthetic
from mock_vast_server.launch import start_server
from tests.predict_support import tiny_checkpoint

ASK = "--voxel-size X Y Z"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """EM as a folder of PNG sections: no voxel size anywhere."""
    path = tmp_path_factory.mktemp("em") / "sections"
    for z, section in enumerate(make_synthetic((2, 128, 160), seed=1).em):
        write_png(path / f"s{z:02d}.png", section)
    return path


def _predict(tmp_path, folder, out, *extra):
    ckpt = tiny_checkpoint(tmp_path / "net.pt")
    return CliRunner().invoke(app, [
        "predict", str(ckpt), "--source", str(folder), "--out", str(tmp_path / out), "--tile",
        "128", "--chunk", "128,128,2", "--margin", "16", "--no-skip-blank", "--zarr", *extra])


def test_predict_without_voxel_size_warns_and_option_is_xyz(tmp_path, folder):
    plain = _predict(tmp_path, folder, "a")
    assert plain.exit_code == 0, plain.output
    warning = [line for line in plain.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "no voxel size" in warning[0] and ASK in warning[0]
    given = _predict(tmp_path, folder, "b", "--voxel-size", "4", "5", "40")
    assert given.exit_code == 0, given.output
    assert "no voxel size" not in given.output
    v = read_vsvi(tmp_path / "b" / "probability.vsvi")
    assert (v.target_voxel_size_x_nm, v.target_voxel_size_y_nm, v.target_voxel_size_z_nm) == \
        (4.0, 5.0, 40.0)
    attrs = json.loads((tmp_path / "b" / "probability.zarr" / ".zattrs").read_text())
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [40.0, 5.0, 4.0]  # OME-Zarr axes are z, y, x
    bad = _predict(tmp_path, folder, "c", "--voxel-size", "4", "0", "40")
    assert bad.exit_code == 2 and "voxel_size" in bad.output


def test_instances_without_voxel_size_warns(tmp_path, folder):
    out = CliRunner().invoke(app, ["instances", str(folder), "-o", str(tmp_path / "i.zarr")])
    assert out.exit_code == 0 and ASK in out.output, out.output
    out = CliRunner().invoke(app, ["instances", str(folder), "-o", str(tmp_path / "j.zarr"),
                                   "--voxel-size", "4", "4", "30"])
    assert out.exit_code == 0 and ASK not in out.output, out.output
    assert open_volume(tmp_path / "j.zarr").voxel_size == (30.0, 4.0, 4.0)


def test_serve_without_voxel_size_warns(tmp_path, folder):
    with start_server(str(folder), state_dir=tmp_path / "s") as srv:
        with VastClient(srv.host, srv.port) as c:
            info = c.get_info()
        assert ASK in srv.stderr
    assert (info.voxel_x, info.voxel_y, info.voxel_z) == (1.0, 1.0, 1.0)
    with start_server(str(folder), state_dir=tmp_path / "t", voxel_size=(40, 5, 4)) as srv:
        with VastClient(srv.host, srv.port) as c:
            info = c.get_info()
        assert ASK not in srv.stderr
    assert (info.voxel_x, info.voxel_y, info.voxel_z) == (4.0, 5.0, 40.0)


def test_vast_info_names_its_axes(vast_server):
    with VastClient(vast_server.host, vast_server.port) as c:
        info = c.get_info()
        c.set_view_coordinates(10, 20, 3)
        view = c.get_info()
    assert (info.size_x, info.size_y, info.size_z) == (256, 256, 8)
    assert (info.voxel_x, info.voxel_y, info.voxel_z) == (8.0, 8.0, 40.0)  # synthetic
    assert (view.view_x, view.view_y, view.view_z) == (10, 20, 3)
    assert info.extent() == "x 0..255, y 0..255, z 0..7"
    assert np.array_equal(info.data_size, (info.size_z, info.size_y, info.size_x))


def test_train_records_the_voxel_size_or_asks_for_it(tmp_path):
    from membrane_py.train.checkpoint import load_checkpoint

    syn = make_synthetic((2, 96, 96), seed=4)
    for z in range(2):
        write_png(tmp_path / "im" / f"s{z}.png", syn.em[z])
        write_png(tmp_path / "lab" / f"s{z}.png", syn.membranes[z].astype(np.uint8))
    base = ["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"),
            "--label-format", "classes", "--depth", "2", "--base-filters", "4",
            "--patch-size", "64", "--patches-per-epoch", "4", "--val-patches", "2", "--epochs",
            "1", "--batch-size", "4", "--device", "cpu"]
    plain = CliRunner().invoke(app, base + ["--out", str(tmp_path / "a")])
    assert plain.exit_code == 0, plain.output
    assert ASK in plain.output
    assert load_checkpoint(tmp_path / "a" / "unet.pt").voxel_size == [1.0, 1.0, 1.0]
    given = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b"), "--voxel-size", "4",
                                            "5", "40"])
    assert given.exit_code == 0, given.output
    assert ASK not in given.output
    assert load_checkpoint(tmp_path / "b" / "unet.pt").voxel_size == [40.0, 5.0, 4.0]  # z, y, x
