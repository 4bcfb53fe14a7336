"""Every architecture behind ``--arch`` through every command: train records it in the
checkpoint, and predict, evaluate and export-onnx (with its ONNX Runtime check) run the
trained network. Tiny networks on synthetic EM, CPU."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.infer.engine import load_predictor
from membrane_py.infer.surgery import inference_model
from membrane_py.models import ARCHS, UNetConfig, build_model
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.volumes.synthetic import make_synthetic
from tests.predict_support import synthetic_training_folders

TINY = ["--depth", "2", "--base-filters", "4", "--patch-size", "64", "--patches-per-epoch", "8",
        "--val-patches", "4", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_command_runs_each_architecture(tmp_path, arch):
    images, labels = synthetic_training_folders(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--images", str(images), "--labels", str(labels),
                              "--label-format", "isbi", "--out", str(tmp_path / "run"),
                              "--arch", arch, *TINY])
    assert res.exit_code == 0, res.output
    pt = tmp_path / "run" / "unet.pt"
    ck = load_checkpoint(pt)
    assert ck.model["arch"] == arch and ck.model_config.arch == arch
    assert ck.train_config["arch"] == arch

    res = runner.invoke(app, ["predict", str(pt), "--source", "synthetic:2x96x96",
                              "--out", str(tmp_path / "pred"), "--chunk", "64,64,2",
                              "--tile", "64", "--margin", "16"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pred" / "probability.vsvi").is_file()
    assert list((tmp_path / "pred" / "probability" / "mip0").rglob("*.png"))

    res = runner.invoke(app, ["evaluate", str(pt), str(images / "s0.png"), "--label-dir",
                              str(labels), "--label-format", "isbi", "--out",
                              str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "v_rand" in json.loads((tmp_path / "ev" / "metrics.json").read_text())[0]

    onnx_path = tmp_path / "model.onnx"
    res = runner.invoke(app, ["export-onnx", str(pt), str(onnx_path)])  # checks vs PyTorch
    assert res.exit_code == 0, res.output
    em = make_synthetic((1, 80, 112), seed=1).em
    by_torch = load_predictor(pt, backend="torch", device="cpu").predict(em)
    by_onnx = load_predictor(onnx_path, device="cpu").predict(em)
    assert np.abs(by_torch - by_onnx).max() < 1e-4


def test_resunet_inference_rewrite_keeps_the_output():
    torch.manual_seed(0)
    net = build_model(UNetConfig(depth=2, base_filters=4, arch="resunet")).train()
    x = torch.randn(2, 1, 64, 64)
    net(x)  # non-trivial batch-norm running statistics
    net.eval()
    with torch.no_grad():
        ref, got = net(x), inference_model(net)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference_model(net).modules())
    assert torch.allclose(ref, got, atol=1e-5)


def test_configs_without_arch_are_the_plain_unet_and_unknown_arch_is_refused():
    old = {k: v for k, v in UNetConfig(depth=2).to_dict().items() if k != "arch"}
    assert UNetConfig.from_dict(old).arch == "unet"
    assert sum(p.numel() for p in build_model(old).parameters()) < sum(
        p.numel() for p in build_model({**old, "arch": "resunet"}).parameters())
    with pytest.raises(ValueError, match="arch must be one of"):
        UNetConfig(arch="densenet")
