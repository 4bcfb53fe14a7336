"""`membrane ffn prep|train|infer|import` through the CLI, with a real mock VAST to paint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from cli_process import CLI
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.ffn.checkpoint import load_ffn
from membrane_py.geometry import Box
from membrane_py.vastapi.client import VastClient

SYNTH = "synthetic:20x64x64:3"
TINY = ["--depth", "1", "--features", "4", "--fov", "7,9,9", "--deltas", "2,2,2"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ffn")
    out = invoke("ffn", "prep", SYNTH, "-o", tmp / "c.npz", "--radius", "4,4,4", "--margin",
                 "6,6,6", "--min-size", "50", "--max-per-partition", "50")
    assert out.exit_code == 0, out.output
    out = invoke("ffn", "train", SYNTH, SYNTH, "--coordinates", tmp / "c.npz", "-o",
                 tmp / "m.pt", *TINY, "--steps", "3", "--batch-size", "2", "--save-job",
                 tmp / "train.json")
    assert out.exit_code == 0, out.output
    assert json.loads((tmp / "train.json").read_text())["kind"] == "ffn-train"
    return tmp / "m.pt"


def test_cli_train_and_infer_outputs(tiny_checkpoint, tmp_path):
    assert load_ffn(tiny_checkpoint).step == 3
    # an untrained network keeps little more than the seed voxels: min size 1 keeps them
    common = ["--box", "0,39,0,39,0,19", "--min-segment-size", "1", "--seed", "20,20,10",
              "--seed", "30,12,8"]
    out = invoke("ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "s.tif", *common)
    assert out.exit_code == 0, out.output
    seg = tifffile.imread(tmp_path / "s.tif")
    assert seg.shape == (20, 40, 40) and seg.dtype == np.uint32
    assert seg[10, 20, 20] > 0 and seg[8, 12, 30] > 0 and seg[8, 12, 30] != seg[10, 20, 20]
    # a shift mask: all quiet changes nothing, a large shift everywhere blocks every FOV
    for name, value in (("calm", 0), ("shifted", 9)):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.full((20, 32, 32), value, np.uint8),
                         photometric="minisblack")
        out = invoke("ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / f"{name}.npz",
                     *common, "--shift-mask", tmp_path / f"{name}.tif", "--shift-mask-scale",
                     "2", "--shift-mask-threshold", "4")
        assert out.exit_code == 0, out.output
    assert np.array_equal(np.load(tmp_path / "calm.npz")["segmentation"], seg)
    assert not np.load(tmp_path / "shifted.npz")["segmentation"].any()
    out = invoke("ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "c.npz", *common,
                 "--consensus", "--consensus-min-size", "1")
    assert out.exit_code == 0, out.output
    consensus = np.load(tmp_path / "c.npz")
    assert consensus["segmentation"].any() and len(consensus["origins"]) >= 1
    assert not (consensus["segmentation"][seg == 0]).any()  # it only ever splits
    out = invoke("ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "tiles", *common,
                 "--colors", "palette")
    assert out.exit_code == 0, out.output
    assert (tmp_path / "tiles" / "tiles.vsvi").is_file()
    out = invoke("ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "s.zarr", *common,
                 "--precision", "bf16", "--channels-last")
    assert out.exit_code == 0, out.output
    out = invoke("ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "sub.tif", "--box",
                 "0,39,0,39,0,19", "--min-segment-size", "1", "--subvolume", "20,20,20",
                 "--overlap", "4,4,4")
    assert out.exit_code == 0, out.output
    assert tifffile.imread(tmp_path / "sub.tif").shape == (20, 40, 40)


def test_cli_user_mistakes(tiny_checkpoint, tmp_path):
    tifffile.imwrite(tmp_path / "small_mask.tif", np.zeros((3, 8, 8), np.uint8),
                     photometric="minisblack")
    cases = [
        (["ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "x.tif", "--mask",
          tmp_path / "small_mask.tif"], "must cover the same volume"),
        (["ffn", "infer", SYNTH, tmp_path / "none.pt", "-o", tmp_path / "x.tif"],
         "does not exist"),
        (["ffn", "infer", SYNTH, tmp_path, "-o", tmp_path / "x.tif"],
         "is a folder, not a checkpoint file"),
        (["ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "x.tif", "--box",
          "0,5,0,5,0,5"], "smaller than the FFN field of view"),
        (["ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "x.tif", "--box",
          "0,39,0,39,0,19", "--seed", "50,50,5"], "outside"),
        (["ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "x.tif", "--precision",
          "fp8"], "precision"),
        (["ffn", "train", SYNTH, SYNTH, "--coordinates", tmp_path / "none.npz", "-o",
          tmp_path / "m.pt"], "ffn prep"),
        (["ffn", "prep", SYNTH, "-o", tmp_path / "c.npz", "--radius", "4,4"], "--radius"),
        (["ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "x.tif", "--box",
          "0,39,0,39,0,19", "--shift-mask", tmp_path / "small_mask.tif"], "does not cover"),
        (["ffn", "infer", SYNTH, tiny_checkpoint, "-o", tmp_path / "x.tif", "--depth", "2",
          "--features", "4", "--fov", "7,9,9", "--deltas", "2,2,2"], "not the configured"),
    ]
    for args, words in cases:
        out = invoke(*args)
        assert out.exit_code == 2, (args, out.output)
        lines = [line for line in out.output.splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0], (args, out.output)


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
def test_ctrl_c_says_inference_starts_over(tiny_checkpoint, tmp_path):
    """FFN inference keeps nothing of an interrupted run: Ctrl-C must not promise a resume."""
    proc = subprocess.Popen([*CLI, "ffn", "infer", "synthetic:100x256x256:3",
                             str(tiny_checkpoint), "-o", str(tmp_path / "x.tif"), *TINY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said = [proc.stderr.readline()]  # "N seeds in subvolume ...": the objects grow next
    proc.send_signal(signal.SIGINT)
    said.append(proc.stderr.read())
    assert proc.wait(60) == 130, said
    assert "keeps no partial result" in said[1] and "continues" not in said[1], said
    assert not (tmp_path / "x.tif").exists()


def test_cli_paints_into_vast(tiny_checkpoint, tmp_path, vast_server):
    address = f"vast://{vast_server.host}:{vast_server.port}"
    out = invoke("ffn", "infer", address, tiny_checkpoint, "-o", tmp_path / "s.npz", "--box",
                 "0,49,0,49,0,7", "--min-segment-size", "1", "--seed", "20,20,3",
                 *TINY,
                 "--paint", address)
    assert out.exit_code == 0, out.output
    seg = np.load(tmp_path / "s.npz")["segmentation"]
    with VastClient(vast_server.host, vast_server.port) as c:
        names = c.get_layer_names()
        assert "membrane-py ffn" in names
        c.set_selected_api_layer(names.index("membrane-py ffn"))
        painted = c.get_seg_image_rle(Box(0, 8, 0, 50, 0, 50), 0)
    assert ((painted > 0) == (seg > 0)).all() and seg.any()


@pytest.mark.realdata
def test_cli_import_and_mismatch(shared_data, tmp_path):
    prefix = shared_data / "ffn_fib25_model" / "model.ckpt-27465036"
    out = invoke("ffn", "import", prefix, "-o", tmp_path / "fib25.pt")
    assert out.exit_code == 0, out.output
    assert load_ffn(tmp_path / "fib25.pt").step == 27465036
    out = invoke("ffn", "import", prefix, "-o", tmp_path / "x.pt", "--depth", "9")
    assert out.exit_code == 2 and "depth-9" in out.output
