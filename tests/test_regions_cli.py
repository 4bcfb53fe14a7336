"""Regions say what they do (issue 11, item 5), through the CLI: a --box outside the volume
stops with the volume's extent (or, with --clip, warns and goes on), and `membrane
instances --box` output pastes into `membrane paint --mode labels` at its recorded box."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.geometry import Box, box_in_volume
from membrane_py.segment.instances import membrane_map_from_labels
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.open import open_volume
from membrane_py.volumes.synthetic import make_synthetic
from tests.predict_support import tile_keys, tiny_checkpoint

SHAPE = (8, 256, 256)  # the vast_server fixture's volume
EXTENT = "x 0..255, y 0..255, z 0..7"


@pytest.fixture(scope="module")
def prob_tif(tmp_path_factory):
    s = make_synthetic(SHAPE, seed=0)  # what vast_server serves
    path = tmp_path_factory.mktemp("regions") / "prob.tif"
    prob = (1 + membrane_map_from_labels(s.instances, seed=3) * 254).astype(np.uint8)
    tifffile.imwrite(path, prob, photometric="minisblack")
    return path


def test_box_in_volume_error_and_clip():
    with pytest.raises(ValueError, match=f"spans {EXTENT}.*--clip"):
        box_in_volume([200, 300, 0, 10, 0, 0], SHAPE)
    with pytest.raises(ValueError, match="lies outside the volume"):
        box_in_volume([300, 400, 0, 10, 0, 0], SHAPE, clip=True)
    box, note = box_in_volume([200, 300, 0, 10, 0, 9], SHAPE, clip=True)
    assert box == Box(0, 8, 0, 11, 200, 256) and "200,255,0,10,0,7" in note
    assert box_in_volume([0, 255, 0, 255, 0, 7], SHAPE) == (Box.full(SHAPE), None)


def test_predict_box_outside_is_an_error_and_clip_warns(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "net.pt")
    base = ["predict", str(ckpt), "--source", "synthetic:8x256x256", "--chunk", "128,128,4",
            "--tile", "128", "--margin", "16", "--no-skip-blank"]
    bad = CliRunner().invoke(app, base + ["--out", str(tmp_path / "a"),
                                          "--box", "100,300,0,99,0,3"])
    assert bad.exit_code == 2, bad.output
    assert EXTENT in bad.output and "--clip" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "a" / "probability").exists()
    ok = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b"), "--box",
                                         "100,300,0,99,0,3", "--clip"])
    assert ok.exit_code == 0, ok.output
    assert "warning:" in ok.output and "clipped to 100,255,0,99,0,3" in ok.output
    assert tile_keys(tmp_path / "b" / "probability", 0) == {(z, 0, c) for z in range(4)
                                                             for c in (0, 1)}


def test_instances_box_outside(tmp_path, prob_tif):
    out = CliRunner().invoke(app, ["instances", str(prob_tif), "-o", str(tmp_path / "i.zarr"),
                                   "--box", "0,99,0,99,5,12"])
    assert out.exit_code == 2 and EXTENT in out.output, out.output
    out = CliRunner().invoke(app, ["instances", str(prob_tif), "-o", str(tmp_path / "i.zarr"),
                                   "--box", "0,99,0,99,5,12", "--clip"])
    assert out.exit_code == 0 and "clipped to 0,99,0,99,5,7" in out.output, out.output


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_instances_box_pastes_into_paint_labels(tmp_path, prob_tif, vast_server, suffix):
    address = f"vast://{vast_server.host}:{vast_server.port}"
    inst = tmp_path / f"inst{suffix}"
    out = CliRunner().invoke(app, ["instances", str(prob_tif), "-o", str(inst), "--box",
                                   "40,169,60,139,2,4", "--h", "0.1"])
    assert out.exit_code == 0, out.output
    placed = open_volume(inst, labels=True)
    assert placed.shape == SHAPE  # the whole volume, ids only inside the recorded box
    box = Box.from_vast(40, 169, 60, 139, 2, 4)
    ids = placed.read(box)
    assert ids.max() > 5 and not placed.read(Box(0, 2, 0, 256, 0, 256)).any()
    name = f"pasted {suffix}"
    out = CliRunner().invoke(app, ["paint", str(inst), "--vast", address, "--mode", "labels",
                                   "--layer-name", name, "--no-save"])
    assert out.exit_code == 0, out.output
    with VastClient(vast_server.host, vast_server.port) as c:
        layer = c.get_layer_names().index(name)
        c.set_api_layers_enabled(True)
        c.set_selected_api_layer(layer)
        seg = c.get_seg_image(Box.full(SHAPE))
    inside = seg[box.slices()]
    assert ((inside > 0) == (ids > 0)).all()  # painted exactly where the ids are
    seg[box.slices()] = 0
    assert not seg.any()  # nothing outside the recorded box
    pairs = {(int(a), int(b)) for a, b in zip(ids[ids > 0], inside[ids > 0], strict=True)}
    assert len(pairs) == len(np.unique(ids[ids > 0]))  # one VAST segment per source id


def test_gt_box_outside_prints_the_extent(tmp_path, prob_tif):
    out = CliRunner().invoke(app, ["gt", "membrane", str(prob_tif), str(tmp_path / "gt"),
                                   "--box", "0,99,0,300,0,1"])
    assert out.exit_code == 2 and EXTENT in out.output, out.output


def test_fill_seed_outside_prints_the_extent(prob_tif, vast_server):
    out = CliRunner().invoke(app, ["fill", str(prob_tif), "--vast",
                                   f"vast://{vast_server.host}:{vast_server.port}",
                                   "--seed", "10,300,2", "--no-save"])
    assert out.exit_code == 2 and EXTENT in out.output and "10,300,2" in out.output, out.output


def test_paint_box_outside_is_an_error_and_clip_paints_the_inside(prob_tif, vast_server):
    address = f"vast://{vast_server.host}:{vast_server.port}"
    base = ["paint", str(prob_tif), "--vast", address, "--mode", "mask", "--no-save",
            "--layer-name", "clip test", "--box", "200,300,0,40,7,9"]
    bad = CliRunner().invoke(app, base)
    assert bad.exit_code == 2 and EXTENT in bad.output and "--clip" in bad.output, bad.output
    ok = CliRunner().invoke(app, base + ["--clip"])
    assert ok.exit_code == 0 and "clipped to 200,255,0,40,7,7" in ok.output, ok.output
    with VastClient(vast_server.host, vast_server.port) as c:
        c.set_api_layers_enabled(True)
        c.set_selected_api_layer(c.get_layer_names().index("clip test"))
        seg = c.get_seg_image(Box.full(SHAPE))
    assert seg[7, :41, 200:].any() and not seg[:7].any() and not seg[7, 41:].any()
