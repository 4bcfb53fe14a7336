"""ONNX export with metadata, the ONNX Runtime engine (ours and third-party models), the CLI."""

import io
import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.infer.engine import load_predictor
from membrane_py.infer.onnx_backend import METADATA_KEY, OnnxModelInfo
from membrane_py.infer.predictor import Predictor
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.predict.evaluate import evaluate_images
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint
from membrane_py.transfer.onnx import export_onnx
from membrane_py.volumes.synthetic import make_synthetic

TOLERANCE = 1e-4  # max |p_onnx - p_torch| of probabilities (float32 on CPU; seen ~1e-7)


def checkpoint(clahe: bool) -> Checkpoint:
    """A small U-Net (depth 3) with random weights and BatchNorm statistics."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=3, base_filters=4))
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return Checkpoint(state_dict=net.state_dict(), model=net.config.to_dict(),
                      class_names=["non-membrane", "membrane"],
                      preprocess=PreprocessConfig(clahe=clahe).to_dict())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A CLAHE checkpoint saved as .pt and exported to .onnx (with the check)."""
    folder = tmp_path_factory.mktemp("onnx")
    ck = checkpoint(clahe=True)
    ck.mip = 1
    pt = save_checkpoint(folder / "net.pt", ck)
    report = export_onnx(pt, folder / "net.onnx")
    return ck, pt, report


def test_export_check_and_metadata_round_trip(exported):
    ck, _, report = exported
    assert report.opset == 17 and set(report.max_abs_diff) == {"random", "synthetic"}
    assert max(report.max_abs_diff.values()) < 1e-4
    model = onnx.load(report.path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props[METADATA_KEY])
    assert meta["class_names"] == ["non-membrane", "membrane"]
    assert meta["architecture"] == ck.model and meta["multiple"] == 8 and meta["mip"] == 1
    info = OnnxModelInfo.from_json(props[METADATA_KEY])
    assert info.preprocess == ck.preprocess_config and info.preprocess.clahe


def test_torch_and_onnx_engines_agree(exported):
    _, pt, report = exported
    em = make_synthetic((2, 200, 333), seed=3).em
    torch_pred = load_predictor(pt, backend="torch", tile=128)
    onnx_pred = load_predictor(report.path, tile=128, batch_size=3)  # backend from suffix
    assert isinstance(onnx_pred, Predictor) and onnx_pred.backend.device_type == "cpu"
    assert onnx_pred.class_names == torch_pred.class_names
    p_torch, p_onnx = torch_pred.predict(em), onnx_pred.predict(em)
    assert p_onnx.shape == (2, 2, 200, 333)
    assert np.abs(p_torch - p_onnx).max() < TOLERANCE
    in_memory = load_predictor(pt, backend="onnx", tile=128).predict(em)
    assert np.abs(in_memory - p_onnx).max() < 1e-6
    with pytest.raises(ValueError, match="ONNX model"):
        load_predictor(report.path, backend="torch")


def test_clahe_metadata_is_applied(exported):
    ck, _, report = exported
    em = make_synthetic((1, 96, 96), seed=4).em
    plain = checkpoint(clahe=False)
    with_clahe = load_predictor(report.path).predict(em)
    assert np.abs(with_clahe - load_predictor(ck).predict(em)).max() < TOLERANCE
    assert np.abs(with_clahe - load_predictor(plain, backend="onnx").predict(em)).max() > 1e-3


def test_real_em_export_check_and_engines(exported, shared_data, tmp_path):
    ck, pt, _ = exported
    image = cv2.imread(str(shared_data / "isbi2012" / "images" / "00.png"), cv2.IMREAD_GRAYSCALE)
    if image is None:
        pytest.skip("isbi2012/images/00.png not readable")
    report = export_onnx(ck, tmp_path / "real.onnx", sample=image)
    assert report.max_abs_diff["sample"] < 1e-4
    p_torch = load_predictor(pt).predict(image[None])
    p_onnx = load_predictor(report.path).predict(image[None])
    assert np.abs(p_torch - p_onnx).max() < TOLERANCE


class _TinySeg(nn.Module):
    """A stand-in third-party segmenter: two 3x3 convs (receptive radius 2)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * 4.0


def _export_plain(net: nn.Module, path, shape: tuple[int, ...], dynamic: bool) -> None:
    axes = {0: "n", 2: "h", 3: "w"}
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.zeros(shape),), buf, dynamo=False,
                      input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": axes, "scores": axes} if dynamic else None)
    path.write_bytes(buf.getvalue())


def _reference(net: nn.Module, em: np.ndarray, pad: int) -> torch.Tensor:
    """Model output on the whole reflect-padded section (x / 255), cropped back."""
    x = np.pad(em.astype(np.float32) / 255.0, pad, mode="reflect")
    with torch.inference_mode():
        out = net(torch.from_numpy(x)[None, None])
    return out[0, :, pad:-pad, pad:-pad]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_third_party_model_without_metadata(tmp_path):
    net = _TinySeg(3)
    path = tmp_path / "other.onnx"
    _export_plain(net, path, (1, 1, 64, 64), dynamic=True)
    pred = load_predictor(path)
    assert pred.class_names == ["class_1", "class_2", "class_3"] and pred.n_classes == 3
    assert pred.preprocessing == PreprocessConfig(mean=0.0, std=1.0)
    em = make_synthetic((1, 64, 96), seed=6).em
    prob = pred.predict(em)
    ref = torch.softmax(_reference(net, em[0], 64), 0).numpy()  # 64+128, 96+128: x32
    assert np.abs(prob[0] - ref).max() < TOLERANCE


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_third_party_fixed_size_single_channel_model(tmp_path):
    net = _TinySeg(1)
    path = tmp_path / "fixed.onnx"
    _export_plain(net, path, (1, 1, 128, 128), dynamic=False)
    pred = load_predictor(path, margin=16, batch_size=4)
    assert pred.backend.window == (128, 128) and pred.batch_size == 1
    assert pred.class_names == ["background", "foreground"]
    em = make_synthetic((2, 150, 230), seed=7).em
    prob = pred.predict(em)
    assert prob.shape == (2, 2, 150, 230)
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)
    for z in range(2):
        ref = torch.sigmoid(_reference(net, em[z], 16))[0].numpy()
        assert np.abs(prob[z, 1] - ref).max() < TOLERANCE


def test_evaluate_accepts_onnx(exported, tmp_path):
    _, pt, report = exported
    cv2.imwrite(str(tmp_path / "a.png"), make_synthetic((1, 70, 90), seed=8).em[0])
    evaluate_images(pt, [tmp_path / "a.png"], tmp_path / "pt")
    evaluate_images(report.path, [tmp_path / "a.png"], tmp_path / "onnx")
    a = cv2.imread(str(tmp_path / "pt" / "a_probability.png"), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(tmp_path / "onnx" / "a_probability.png"), cv2.IMREAD_UNCHANGED)
    assert a.shape == (70, 90) and np.abs(a.astype(int) - b).max() <= 1


def test_cli_export_onnx(exported, tmp_path):
    from typer.testing import CliRunner

    from membrane_py.cli import app

    _, pt, _ = exported
    runner = CliRunner()
    res = runner.invoke(app, ["export-onnx", str(pt), str(tmp_path / "cli.onnx"), "--opset", "18"])
    assert res.exit_code == 0, res.output
    assert "max abs difference of logits vs PyTorch, synthetic input" in res.output
    assert onnx.load(tmp_path / "cli.onnx").opset_import[0].version == 18
    res = runner.invoke(app, ["export-onnx", str(pt), str(tmp_path / "fast.onnx"), "--no-check"])
    assert res.exit_code == 0 and "max abs difference" not in res.output
    assert (tmp_path / "fast.onnx").stat().st_size > 1000
