"""Exported ONNX models take inputs of any height and width: the graph pads to the network's
multiple and crops back, in plain ONNX Runtime and through the OnnxBackend."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from predict_support import tiny_checkpoint

from membrane_py.infer.onnx_backend import OnnxBackend
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.transfer.onnx import export_onnx

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    pt = tiny_checkpoint(folder / "a.pt", seed=3)
    report = export_onnx(pt, folder / "a.onnx")  # includes onnx.checker and the torch check
    return load_checkpoint(pt), report.path


def _torch_logits(ck, x: np.ndarray) -> np.ndarray:
    """Reference: PyTorch on the input reflect-padded to the multiple, cropped back."""
    m = ck.model_config.multiple
    h, w = x.shape[-2:]
    xp = np.pad(x, ((0, 0), (0, 0), (0, -h % m), (0, -w % m)), mode="reflect")
    with torch.inference_mode():
        return ck.build_model()(torch.from_numpy(xp)).numpy()[:, :, :h, :w]


def test_plain_onnx_runtime_runs_odd_sizes(exported):
    ck, path = exported
    assert 301 % ck.model_config.multiple and 517 % ck.model_config.multiple
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 1, 301, 517), np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == (2, 2, 301, 517)
    assert np.abs(got - _torch_logits(ck, x)).max() < TOLERANCE


def test_backend_runs_odd_and_tiny_sizes(exported):
    ck, path = exported
    backend = OnnxBackend(path, device="cpu")
    x = np.random.default_rng(1).random((1, 1, 301, 517), np.float32)
    probs = backend.run(x)
    ref = torch.softmax(torch.from_numpy(_torch_logits(ck, x)), 1).numpy()
    assert np.abs(probs - ref).max() < TOLERANCE
    for h, w in [(1, 2), (3, 5), (2, 9)]:  # shorter than the pad: edge pixels fill the rest
        assert backend.run(np.ones((1, 1, h, w), np.float32)).shape == (1, 2, h, w)


def test_graph_keeps_symbolic_sizes(exported):
    _, path = exported
    graph = onnx.load(path).graph
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
