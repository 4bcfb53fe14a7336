"""The PyTorch backend of the tiled engine (:class:`membrane_py.infer.engine.Backend`)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from membrane_py.infer.surgery import inference_model
from membrane_py.models.unet import UNet
from membrane_py.train.device import pick_device

TORCH_PRECISIONS = ("fp32", "bf16")


class TorchBackend:
    """PyTorch backend: the network rewritten for inference
    (:func:`~membrane_py.infer.surgery.inference_model`), channels-last, ``precision``
    ``fp32`` or ``bf16`` (autocast on CUDA or the CPU; see
    :mod:`membrane_py.infer.precision`), optionally ``torch.compile`` (with freezing:
    constant weights let Inductor prepack them and fuse convolution + ReLU). ``activation``
    turns logits into probabilities: ``softmax`` over classes, or ``sigmoid`` per channel
    (affinities)."""

    def __init__(self, model: UNet, device: str | torch.device = "auto",
                 precision: str = "fp32", compile: bool = False,
                 activation: str = "softmax") -> None:
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"the PyTorch backend runs {TORCH_PRECISIONS}, not {precision!r} "
                             "(int8 runs on the ONNX Runtime backend)")
        self.activation = activation
        self.in_channels = model.config.in_channels
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.device_type = self.device.type
        if precision == "bf16" and self.device_type not in ("cpu", "cuda"):
            raise ValueError(f"bf16 runs on the CPU or CUDA, not {self.device_type}; use fp32")
        self.n_classes = model.config.n_classes
        self.multiple = model.config.multiple
        self.window = None
        self.max_batch = None
        self.precision = precision
        net = inference_model(model).to(self.device, memory_format=torch.channels_last)
        self.forward = torch.compile(net, dynamic=False, options={"freezing": True}) \
            if compile else net

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.forward(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits.float()).cpu().numpy()
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
