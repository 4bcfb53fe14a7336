"""ONNX models in the engine: the checkpoint -> ONNX graph conversion with its metadata, and
an ONNX Runtime backend that also runs third-party models.

The graph holds the network only: (N, 1, H, W) float input -> (N, C, H, W) logits, with
dynamic batch, height and width. Any height and width work: the graph reflect-pads the input
at the bottom and right to the network's multiple of ``2 ** depth`` and crops the logits back
(:func:`pad_to_multiple_in_graph`), so the exported file runs in plain ONNX Runtime or any
other runtime on images of any size. The tiled engine feeds multiples (with real context),
for which that pad is empty. Everything else a checkpoint knows (class names, input
normalisation and CLAHE, architecture, mip and voxel size) goes into the model's
``metadata_props`` as one JSON string under :data:`METADATA_KEY`. Preprocessing stays outside
the graph, so both backends run :func:`membrane_py.augment.preprocess.preprocess` and share
the tiling in :mod:`membrane_py.infer.tiling`.

Integrity: the metadata also holds ``tensors_sha256``, the digest
(:func:`membrane_py.train.checkpoint.tensors_sha256`) of every tensor stored in the graph:
the initializers and the values of ``Constant`` nodes, each as name, numpy dtype, shape and
raw bytes. Hashing decoded tensors rather than the serialised graph keeps the digest
independent of how a protobuf library orders or encodes fields. Loading a model that carries
the digest checks it (:class:`~membrane_py.train.checkpoint.CheckpointError` on mismatch).

A model without that metadata (exported elsewhere) gets defaults: input ``x / 255``,
softmax over the output channels (sigmoid when there is one channel), class names
``class_1 .. class_C``, sides padded to multiples of 32.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.train.checkpoint import Checkpoint, CheckpointError, tensors_sha256
from membrane_py.train.device import pick_device

METADATA_KEY = "membrane_py"
FORMAT = "membrane-py-onnx"
VERSION = 1
OUTPUTS = ("logits", "probabilities")
INPUT_NAME = "em"
OUTPUT_NAME = "logits"
DEFAULT_MULTIPLE = 32


@dataclass(frozen=True)
class OnnxModelInfo:
    """What the engine needs to know about an ONNX model beyond its graph."""

    class_names: list[str]
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(mean=0.0,
                                                                                  std=1.0))
    multiple: int = DEFAULT_MULTIPLE
    output: str = "logits"
    architecture: dict | None = None
    mip: int = 0
    voxel_size: list[float] | None = None
    tensors_sha256: str | None = None  # see the module docstring; None: not checked
    threshold: float | None = None  # membrane threshold the checkpoint recorded, if any

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"ONNX metadata output must be one of {OUTPUTS}, got "
                             f"{self.output!r}")

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return json.dumps({"format": FORMAT, "version": VERSION, **d})

    @classmethod
    def from_json(cls, text: str) -> OnnxModelInfo:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"ONNX metadata {METADATA_KEY!r} is not {FORMAT!r}")
        if d.get("version", 0) > VERSION:
            raise ValueError(f"ONNX metadata version {d['version']}; this membrane-py reads up to "
                             f"{VERSION}: upgrade membrane-py")
        d["preprocess"] = PreprocessConfig.from_dict(d.get("preprocess", {}))
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint) -> OnnxModelInfo:
        return cls(class_names=list(ck.class_names), preprocess=ck.preprocess_config,
                   multiple=ck.model_config.multiple, output="logits",
                   architecture=ck.model_config.to_dict(), mip=int(ck.mip),
                   voxel_size=[float(v) for v in ck.voxel_size], threshold=ck.threshold)


def onnx_model(ck: Checkpoint, opset: int = 17) -> onnx.ModelProto:
    """The checkpoint's network as an ONNX model with dynamic batch/height/width and the
    checkpoint metadata. Uses the TorchScript exporter (no onnxscript dependency); its
    deprecation and tracer warnings (the shape check in ``UNet.forward``) are expected."""
    net = ck.build_model()
    side = 2 * ck.model_config.multiple
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (torch.zeros(1, 1, side, side),), buf, dynamo=False,
                          opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    model = pad_to_multiple_in_graph(onnx.load_from_string(buf.getvalue()),
                                     ck.model_config.multiple)
    info = replace(OnnxModelInfo.from_checkpoint(ck), tensors_sha256=onnx_tensors_sha256(model))
    onnx.helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    model.doc_string = f"membrane-py U-Net, classes {', '.join(ck.class_names)}"
    return model


def pad_to_multiple_in_graph(model: onnx.ModelProto, multiple: int) -> onnx.ModelProto:
    """Wrap a single-input, single-output 4D graph so inputs of any height and width work:
    pad H and W at the end up to ``multiple`` and slice the output back to H x W.
    Without this, sides that are not multiples fail deep inside the graph (a Concat of
    up-sampled and skip features of different sizes). The pad mirrors the image (reflect,
    as the tiled engine pads); what reflection cannot cover on sides shorter than the pad
    repeats the edge pixels."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inp, out = graph.input[0].name, graph.output[0].name
    padded, full = f"{inp}_padded", f"{out}_full"
    for node in graph.node:
        node.input[:] = [padded if name == inp else name for name in node.input]
        node.output[:] = [full if name == out else name for name in node.output]
    consts = {"pad_m": [multiple], "pad_one": [1], "pad_hw_start": [2], "pad_hw_end": [4],
              "pad_lead": [0, 0, 0, 0, 0, 0], "crop_start": [0, 0], "crop_axes": [2, 3]}
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), name)
                             for name, v in consts.items())
    node = helper.make_node
    head = [
        node("Shape", [inp], ["pad_shape"]),
        node("Slice", ["pad_shape", "pad_hw_start", "pad_hw_end"], ["pad_hw"]),
        node("Mod", ["pad_hw", "pad_m"], ["pad_rem"]),
        node("Sub", ["pad_m", "pad_rem"], ["pad_short"]),
        node("Mod", ["pad_short", "pad_m"], ["pad_need"]),  # (-side) mod multiple
        node("Sub", ["pad_hw", "pad_one"], ["pad_mirror_max"]),  # reflect needs pad < side
        node("Min", ["pad_need", "pad_mirror_max"], ["pad_mirror"]),
        node("Sub", ["pad_need", "pad_mirror"], ["pad_rest"]),
        node("Concat", ["pad_lead", "pad_mirror"], ["pad_pads_mirror"], axis=0),
        node("Concat", ["pad_lead", "pad_rest"], ["pad_pads_rest"], axis=0),
        node("Pad", [inp, "pad_pads_mirror"], ["pad_mirrored"], mode="reflect"),
        node("Pad", ["pad_mirrored", "pad_pads_rest"], [padded], mode="edge"),
    ]
    crop = node("Slice", [full, "crop_start", "pad_hw", "crop_axes"], [out])
    graph.CopyFrom(helper.make_graph(head + list(graph.node) + [crop], graph.name, graph.input,
                                     graph.output, graph.initializer, graph.doc_string,
                                     graph.value_info))
    return model


def onnx_tensors_sha256(model: onnx.ModelProto) -> str:
    """Digest of the tensors a graph stores (initializers and ``Constant`` node values)."""
    tensors = [(t.name, t) for t in model.graph.initializer]
    tensors += [(node.output[0], a.t) for node in model.graph.node if node.op_type == "Constant"
                for a in node.attribute if a.name == "value"]

    def raw(t: onnx.TensorProto) -> tuple[str, tuple[int, ...], memoryview]:
        a = np.ascontiguousarray(onnx.numpy_helper.to_array(t))
        return str(a.dtype), a.shape, memoryview(a.reshape(-1).view(np.uint8))

    return tensors_sha256((name, *raw(t)) for name, t in tensors)


def read_onnx(model: str | Path | bytes) -> tuple[bytes, OnnxModelInfo | None, str]:
    """The bytes of an ONNX model and its membrane-py metadata (None for models exported
    elsewhere), with the tensor digest checked. Raises
    :class:`~membrane_py.train.checkpoint.CheckpointError` for a file that is not a
    readable ONNX model or whose tensors differ from the digest."""
    label = "the ONNX model" if isinstance(model, bytes) else f"ONNX model {model}"
    data = model_bytes(model)
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends for bad bytes
        raise CheckpointError(f"{label} is not a readable ONNX model (truncated, damaged or "
                              "another kind of file): re-copy or re-export it") from exc
    if not proto.graph.node:
        raise CheckpointError(f"{label} holds no graph (empty, truncated or another kind of "
                              "file): re-copy or re-export it")
    meta = {p.key: p.value for p in proto.metadata_props}
    digest = onnx_tensors_sha256(proto)
    if METADATA_KEY not in meta:
        return data, None, digest
    info = OnnxModelInfo.from_json(meta[METADATA_KEY])
    if info.tensors_sha256 is not None and info.tensors_sha256 != digest:
        raise CheckpointError(f"{label} is damaged: its weights do not match the digest "
                              "stored at export; re-copy it or export it again")
    return data, info, digest


def to_probabilities(out: np.ndarray, kind: str) -> np.ndarray:
    """(N, C, H, W) model output -> float32 probabilities: softmax over C for logits; one
    channel is read as the foreground (sigmoid of logits) and becomes two classes."""
    if kind not in OUTPUTS:
        raise ValueError(f"model output must be one of {OUTPUTS}, got {kind!r}")
    out = out.astype(np.float32, copy=False)
    if out.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-out)) if kind == "logits" else out
        return np.concatenate([1.0 - p, p], axis=1)
    if kind == "probabilities":
        return out
    e = np.exp(out - out.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


class OnnxBackend:
    """ONNX Runtime backend (see :class:`membrane_py.infer.engine.Backend`): full graph
    optimisation, CPU provider, or CUDA when onnxruntime-gpu is installed and the device
    resolves to CUDA. ``threads`` caps the CPU threads of one forward pass (None: one per
    core), e.g. one per Dask worker process so that workers on one machine do not compete."""

    def __init__(self, model: str | Path | bytes, device: str = "auto",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers, self.device_type = _providers(device, ort.get_available_providers())
        data, info, self.tensors_sha256 = read_onnx(model)
        self.session = ort.InferenceSession(data, opts, providers=providers)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if inp.type != "tensor(float)" or len(inp.shape) != 4 or (
                isinstance(inp.shape[1], int) and inp.shape[1] != 1):
            raise ValueError(f"ONNX model input {inp.name!r} must be float (N, 1, H, W), got "
                             f"{inp.type} {inp.shape}")
        self.input_name, self.output_name = inp.name, out.name
        self.in_channels = 1
        n, _, h, w = inp.shape
        self.max_batch = n if isinstance(n, int) else None
        self.window = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        channels = out.shape[1] if len(out.shape) == 4 and isinstance(out.shape[1], int) \
            else self._probe_channels()
        self.n_classes = max(channels, 2)
        if info is not None:
            self.info = info
        else:
            names = ["background", "foreground"] if channels == 1 else \
                [f"class_{i + 1}" for i in range(channels)]
            self.info = OnnxModelInfo(class_names=names)
        self.multiple = self.info.multiple

    def _probe_channels(self) -> int:
        h, w = self.window or (4 * DEFAULT_MULTIPLE, 4 * DEFAULT_MULTIPLE)
        probe = np.zeros((1, 1, h, w), np.float32)
        return int(self.session.run([self.output_name], {self.input_name: probe})[0].shape[1])

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return to_probabilities(out, self.info.output)


def _providers(device: str, available: list[str]) -> tuple[list, str]:
    """ONNX Runtime providers for a device string, and the device type they amount to."""
    gpu = "CUDAExecutionProvider" in available
    if device.startswith("cuda") and not gpu:
        raise ValueError(f"device {device!r} needs onnxruntime-gpu (pip install "
                         f"membrane-py[gpu]); only {available} are available")
    if device.startswith("cuda") or (device == "auto" and gpu and pick_device().type == "cuda"):
        index = torch.device(device if device != "auto" else "cuda").index or 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], "cuda"
    return ["CPUExecutionProvider"], "cpu"


def model_bytes(model: str | Path | bytes) -> bytes:
    return model if isinstance(model, bytes) else Path(model).read_bytes()
