"""Test-time augmentation and lower precision in the tiled engine.

TTA: a network whose every kernel is symmetric under the 8 flips / rotations is equivariant
by construction, so averaging over them must give its plain output (both backends) with zero
uncertainty; a random network is not, so TTA changes its output and the uncertainty is
positive. Precision: a briefly trained tiny network gives int8 (ONNX Runtime static QDQ)
probabilities within 0.05 of fp32 on average (at most 0.25 at any pixel), and bf16 within
0.02 (0.1 at any pixel); the int8 model is cached next to the checkpoint and reused.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.cli import app
from membrane_py.infer.engine import DIHEDRAL, dihedral, dihedral_inverse, load_predictor
from membrane_py.infer.precision import cpu_has_bf16, resolve_precision
from membrane_py.infer.quantize import int8_cache_path
from membrane_py.models import UNetConfig, build_model
from membrane_py.predict.identity import JobMismatchError
from membrane_py.predict.job import PredictJob
from membrane_py.predict.runner import run_prediction
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from membrane_py.transfer.onnx import export_onnx
from membrane_py.volumes.synthetic import make_synthetic
from tests.predict_support import synthetic_training_folders

EM = make_synthetic((2, 96, 128), seed=3).em


def _checkpoint(tmp_path, symmetric: bool) -> Checkpoint:
    torch.manual_seed(0)
    cfg = UNetConfig(depth=2, base_filters=4, norm="none")
    net = build_model(cfg)
    if symmetric:  # average every kernel over the dihedral group: an equivariant network
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                    w = m.weight.numpy()
                    m.weight.copy_(torch.from_numpy(
                        np.mean([dihedral(w, g) for g in DIHEDRAL], axis=0)))
    ck = Checkpoint(state_dict=net.state_dict(), model=cfg.to_dict(),
                    class_names=["non-membrane", "membrane"],
                    preprocess=PreprocessConfig().to_dict())
    save_checkpoint(tmp_path / "model.pt", ck)
    return ck


def test_dihedral_inverse_undoes_each_transform():
    a = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    images = {dihedral(a, g).tobytes() for g in DIHEDRAL}
    assert len(images) == 8  # all distinct
    for g in DIHEDRAL:
        assert np.array_equal(dihedral_inverse(dihedral(a, g), g), a)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_tta_of_an_equivariant_network_is_its_plain_output(tmp_path, backend):
    ck = _checkpoint(tmp_path, symmetric=True)
    plain = load_predictor(ck, backend=backend, device="cpu", precision="fp32").predict(EM)
    tta = load_predictor(ck, backend=backend, device="cpu", precision="fp32", tta=8)
    probs, spread = tta.predict_with_uncertainty(EM)
    assert np.abs(probs - plain).max() < 1e-5
    assert spread.shape == EM.shape and spread.max() < 1e-3
    assert np.abs(plain[:, 1] - 0.5).max() > 1e-3  # not a constant output


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_tta_of_a_plain_network_differs_and_reports_uncertainty(tmp_path, backend):
    ck = _checkpoint(tmp_path, symmetric=False)
    plain = load_predictor(ck, backend=backend, device="cpu", precision="fp32").predict(EM)
    flips = load_predictor(ck, backend=backend, device="cpu", precision="fp32", tta=4)
    probs, spread = flips.predict_with_uncertainty(EM)
    assert np.abs(probs - plain).max() > 1e-3
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert spread.max() > 1e-3 and spread.min() >= 0.0 and spread.max() <= 1.0
    assert np.array_equal(flips.predict(EM), probs)


def test_prediction_writes_an_uncertainty_layer(tmp_path):
    _checkpoint(tmp_path, symmetric=False)
    job = PredictJob(checkpoint=str(tmp_path / "model.pt"), source="synthetic:2x96x96",
                     out=str(tmp_path / "out"), chunk=[2, 64, 64], tile=64, margin=16,
                     tta=8, uncertainty=True, device="cpu")
    result = run_prediction(job)
    assert {p.name for p in result.descriptors} == {"probability.vsvi", "uncertainty.vsvi"}
    tiles = sorted((tmp_path / "out" / "uncertainty" / "mip0").rglob("*.png"))
    assert len(tiles) == len(sorted((tmp_path / "out" / "probability" / "mip0").rglob("*.png")))
    import cv2

    assert max(int(cv2.imread(str(t), cv2.IMREAD_UNCHANGED).max()) for t in tiles) > 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net trained for two short epochs on synthetic EM (kept by validation loss:
    whole-section V_rand may keep the first, still flat, epoch)."""
    folder = tmp_path_factory.mktemp("trained")
    images, labels = synthetic_training_folders(folder)
    res = CliRunner().invoke(app, [
        "train", "--images", str(images), "--labels", str(labels), "--label-format", "isbi",
        "--out", str(folder / "run"), "--depth", "2", "--base-filters", "8", "--patch-size",
        "64", "--patches-per-epoch", "64", "--val-patches", "4", "--epochs", "2",
        "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--val-sections", "0"])
    assert res.exit_code == 0, res.output
    return folder / "run" / "unet.pt"


def test_int8_agrees_with_fp32_and_is_cached(trained, tmp_path):
    em = make_synthetic((2, 128, 128), seed=7).em
    fp32 = load_predictor(trained, device="cpu", precision="fp32").predict(em)[:, 1]
    cache = int8_cache_path(trained, load_checkpoint(trained).digest())
    assert not cache.exists()
    int8 = load_predictor(trained, device="cpu", precision="int8", calibration=lambda: em)
    assert int8.backend.device_type == "cpu" and cache.is_file()
    diff = np.abs(int8.predict(em)[:, 1] - fp32)
    assert diff.mean() < 0.05 and diff.max() < 0.25
    assert fp32.std() > 0.05  # trained: the map is not flat
    stamp = cache.stat().st_mtime_ns
    again = load_predictor(trained, device="cpu", precision="int8",
                           calibration=lambda: pytest.fail("the cached model is reused"))
    assert cache.stat().st_mtime_ns == stamp
    assert np.array_equal(again.predict(em), int8.predict(em))

    onnx_path = export_onnx(trained, tmp_path / "model.onnx", check=False).path
    from_onnx = load_predictor(onnx_path, precision="int8", calibration=lambda: em)
    assert len(list(tmp_path.glob("model.int8-*.onnx"))) == 1  # cached next to the .onnx
    assert np.abs(from_onnx.predict(em)[:, 1] - fp32).mean() < 0.05


def test_int8_prediction_calibrates_on_a_given_folder(tmp_path):
    _checkpoint(tmp_path, symmetric=False)
    images, _ = synthetic_training_folders(tmp_path / "sample")
    job = PredictJob(checkpoint=str(tmp_path / "model.pt"), source="synthetic:2x96x96",
                     out=str(tmp_path / "out"), chunk=[2, 64, 64], tile=64, margin=16,
                     precision="int8", calibration=str(images), device="cpu")
    result = run_prediction(job)
    assert result.tiles_written > 0
    assert len(list(tmp_path.glob("model.int8-*.onnx"))) == 1
    identity = json.loads((tmp_path / "out" / "job_identity.json").read_text())
    assert identity["pixels"]["precision"] == "int8"
    with pytest.raises(JobMismatchError, match="precision"):
        run_prediction(replace(job, precision="fp32"))


def test_bf16_is_close_to_fp32(trained):
    em = make_synthetic((1, 128, 128), seed=8).em
    fp32 = load_predictor(trained, device="cpu", precision="fp32").predict(em)[:, 1]
    bf16 = load_predictor(trained, device="cpu", precision="bf16")
    assert bf16.backend.precision == "bf16"  # PyTorch autocast, chosen for bf16
    diff = np.abs(bf16.predict(em)[:, 1] - fp32)
    assert diff.mean() < 0.02 and diff.max() < 0.1


def test_precision_rule_and_refusals(trained, tmp_path):
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu", 32) == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("auto", "cpu", 16) == resolve_precision("auto", "cpu") == "fp32"
    # 8 filters: auto keeps fp32, on the (faster) ONNX Runtime engine
    assert type(load_predictor(trained, device="cpu").backend).__name__ == "OnnxBackend"
    assert resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="int8 runs on the ONNX Runtime backend"):
        load_predictor(trained, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="bf16 runs on the PyTorch backend"):
        load_predictor(trained, backend="onnx", precision="bf16")
    copy = tmp_path / "copy.pt"  # not quantised yet
    copy.write_bytes(trained.read_bytes())
    with pytest.raises(ValueError, match="int8 needs sample EM"):
        load_predictor(copy, device="cpu", precision="int8")
