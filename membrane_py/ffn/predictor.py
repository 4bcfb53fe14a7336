"""The network call of flood filling: a batch of FOVs in, logits out, as numpy.

``precision`` "bf16" runs the convolutions under bfloat16 autocast (CPUs with AVX-512 BF16
/ AMX and GPUs gain several times; logits come back as float32); ``channels_last`` stores
activations as NDHWC, which oneDNN and cuDNN prefer for 3D convolutions.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from membrane_py.models.ffn import FFN

PRECISIONS = ("fp32", "bf16")


class FFNPredictor:
    """``predictor(images, masks)`` -> updated mask logits, all (B, Z, Y, X) float32."""

    def __init__(self, model: FFN, device: torch.device | str = "cpu",
                 precision: str = "fp32", channels_last: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)

    def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        img = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        seed = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
        img = img.to(self.device).contiguous(memory_format=self.memory_format)
        seed = seed.to(self.device).contiguous(memory_format=self.memory_format)
        # unlike the U-Net's 2D convolutions, the FFN's 3D ones gain from bf16 on CPUs too
        cast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                if self.precision == "bf16" else contextlib.nullcontext())
        with torch.inference_mode(), cast:
            out = self.model(img, seed)
        return out.float()[:, 0].cpu().numpy()
