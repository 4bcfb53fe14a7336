"""The PyTorch backend of the tiled engine (:class:`membrane_py.infer.engine.Backend`)."""

from __future__ import annotations

import numpy as np
import torch

from membrane_py.infer.surgery import InferenceUNet
from membrane_py.models.unet import UNet
from membrane_py.train.device import autocast, pick_device


class TorchBackend:
    """PyTorch backend: :class:`InferenceUNet` in inference mode, channels-last, bf16
    autocast on CUDA, optionally ``torch.compile`` (with freezing: constant weights let
    Inductor prepack them and fuse convolution + ReLU). ``activation`` turns logits into
    probabilities: ``softmax`` over classes, or ``sigmoid`` per channel (affinities)."""

    def __init__(self, model: UNet, device: str | torch.device = "auto", amp: bool = True,
                 compile: bool = False, activation: str = "softmax") -> None:
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
        self.activation = activation
        self.in_channels = model.config.in_channels
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.device_type = self.device.type
        self.n_classes = model.config.n_classes
        self.multiple = model.config.multiple
        self.window = None
        self.max_batch = None
        self.amp = amp
        net = InferenceUNet(model).to(self.device, memory_format=torch.channels_last)
        self.forward = torch.compile(net, dynamic=False, options={"freezing": True}) \
            if compile else net

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.forward(x)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits.float()).cpu().numpy()
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
