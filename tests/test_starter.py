"""The starter membrane model shipped in the package (issue 15, item 1): it loads safely,
segments real EM without fine-tuning, ``starter`` names it wherever a model is taken, and
``membrane train`` starts from it when the network fits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.predict.evaluate import EvaluateJob, run_evaluation
from membrane_py.train.checkpoint import STARTER, load_checkpoint, model_path, starter_path
from membrane_py.volumes.synthetic import make_synthetic

#: whole-section V_rand of the shipped starter on ISBI section 15 without fine-tuning,
#: measured once (bench/train_starter.py evaluate, 2026-12-01: 0.8505); the floor leaves
#: room for other CPUs' rounding near the 0.5 threshold
FLOOR = 0.80


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two synthetic EM sections and their membrane classes (1 / 2)."""
    root = tmp_path_factory.mktemp("starter")
    s = make_synthetic((2, 64, 64), seed=3)
    for z in range(2):
        write_png(root / "em" / f"s{z}.png", s.em[z])
        write_png(root / "gt" / f"s{z}.png", s.membranes[z].astype(np.uint8))
    return root


def test_starter_is_package_data_and_loads_with_weights_only():
    path = starter_path()
    assert path.is_file() and path.parent.parent.name == "models"
    assert path.stat().st_size < 4 * 2**20  # small enough for the repository
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "membrane-py-checkpoint"
    assert model_path(STARTER) == path and model_path("runs/x.pt").name == "x.pt"
    ck = load_checkpoint(STARTER)  # checks the weights against the stored digest
    assert ck.class_names == ["non-membrane", "membrane"] and ck.target == "classes"
    net = ck.model_config
    assert (net.depth, net.base_filters, net.in_channels) == (4, 16, 1)
    assert ck.history  # trained, not a placeholder


@pytest.mark.realdata
def test_starter_segments_isbi_section_15_without_fine_tuning(shared_data, tmp_path):
    isbi = shared_data / "isbi2012"
    rows = run_evaluation(EvaluateJob(
        checkpoint=STARTER, images=[str(isbi / "images" / "15.png")],
        labels=[str(isbi / "labels" / "15.png")], label_format="isbi", out=str(tmp_path),
        device="cpu", precision="fp32")).rows
    assert rows[0]["v_rand"] >= FLOOR, rows


def test_starter_name_resolves_in_the_cli(data, tmp_path):
    r = cli("export-onnx", STARTER, tmp_path / "starter.onnx", "--no-check")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "starter.onnx").stat().st_size > 100_000
    r = cli("evaluate", STARTER, data / "em" / "s0.png", "--label", data / "gt" / "s0.png",
            "--label-format", "classes", "--out", tmp_path / "eval", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= rows[0]["v_rand"] <= 1.0
    r = cli("predict", STARTER, "--source", data / "em", "--out", tmp_path / "pred",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "pred").rglob("*.png"))


def _train(data, out, *extra):
    return cli("train", "--images", data / "em", "--labels", data / "gt", "--label-format",
               "classes", "--out", out, "--patch-size", "32", "--patches-per-epoch", "4",
               "--val-patches", "2", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
               *extra)


def test_train_starts_from_the_starter_when_it_fits_else_from_scratch(data, tmp_path):
    r = _train(data, tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "fine-tuning the starter membrane model" in r.output
    ck = load_checkpoint(tmp_path / "a" / "unet.pt")
    assert ck.lineage["parent"] == STARTER
    assert ck.lineage["parent_sha256"] and ck.model_config == load_checkpoint(STARTER).model_config

    r = _train(data, tmp_path / "b", "--depth", "2")  # another network: from scratch, said so
    assert r.exit_code == 0, r.output
    assert "training from scratch: the starter model" in r.output
    assert load_checkpoint(tmp_path / "b" / "unet.pt").lineage == {}

    r = _train(data, tmp_path / "c", "--pretrained", "none")
    assert r.exit_code == 0, r.output
    assert "fine-tuning the starter" not in r.output and "network: depth 4" in r.output
    assert load_checkpoint(tmp_path / "c" / "unet.pt").lineage == {}
