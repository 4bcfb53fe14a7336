"""Tiled inference engines: one :class:`TiledPredictor`, pluggable compute backends.

The predictor owns everything that does not depend on the runtime (preprocessing from the
checkpoint, reflect-padded context, the tile grid, batching across sections, stitching and
blending; see :mod:`membrane_py.predict.tiling`). A backend only turns a batch of
preprocessed windows into class probabilities: :class:`TorchBackend` here, and
:class:`membrane_py.transfer.onnx.OnnxBackend` for ONNX Runtime. ``load_predictor`` builds
either from a checkpoint or an ``.onnx`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.models.unet import UNet
from membrane_py.predict.tiling import BLENDS, Stitcher, TileGrid, plan_axis
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint
from membrane_py.train.device import autocast, pick_device

BACKENDS = ("auto", "torch", "onnx")
#: default core side: one tile per 1024^2 chunk section keeps the margin overhead at 27%
#: (1152^2 computed per 1024^2 kept); 512 tiles (56% overhead) were ~20% slower on CPU
DEFAULT_TILE = 1024


@dataclass(frozen=True)
class EngineConfig:
    """How sections are cut into network inputs.

    ``tile`` is the target core side (output pixels per tile; ``None``: :data:`DEFAULT_TILE`),
    ``margin`` the context added on each side, ``overlap`` how far neighbouring cores overlap
    (blended with ``blend``), ``batch_size`` tiles per forward pass (``None``: per-device
    default, :func:`default_batch_size`).
    """

    tile: int | None = None
    margin: int = 64
    overlap: int = 0
    blend: str = "none"
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if self.tile is not None and self.tile <= self.overlap:
            raise ValueError(f"tile ({self.tile}) must be larger than overlap ({self.overlap})")
        if self.margin < 0 or self.overlap < 0:
            raise ValueError("margin and overlap must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def default_batch_size(device_type: str) -> int:
    """Tiles per forward pass: GPUs need several large tiles to fill; CPUs gain nothing
    from batching and only spend memory."""
    return 8 if device_type == "cuda" else 1


class Backend(Protocol):
    """Runs the network on preprocessed windows."""

    n_classes: int
    multiple: int  # input sides must be multiples of this
    window: tuple[int, int] | None  # fixed input (height, width), or None when any works
    max_batch: int | None  # fixed batch size of the model, or None
    device_type: str  # "cpu", "cuda", ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 1, H, W) float32 -> (N, C, H, W) float32 probabilities."""
        ...


class TiledPredictor:
    """A :class:`~membrane_py.predict.base.Predictor` over any backend."""

    def __init__(self, backend: Backend, class_names: list[str], preprocessing: PreprocessConfig,
                 config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        if len(class_names) != backend.n_classes:
            raise ValueError(f"{len(class_names)} class names for a {backend.n_classes}-class "
                             "model")
        self.backend = backend
        self.class_names = list(class_names)
        self.n_classes = backend.n_classes
        self.preprocessing = preprocessing
        self.margin = config.margin
        self.overlap = config.overlap
        self.blend = config.blend
        self.tile = config.tile or DEFAULT_TILE
        batch = config.batch_size or default_batch_size(backend.device_type)
        self.batch_size = min(batch, backend.max_batch or batch)

    def grid(self, shape: tuple[int, int, int]) -> TileGrid:
        """The tiling used for a (z, y, x) array."""
        win = self.backend.window
        plans = [plan_axis(n, self.tile, self.margin, self.overlap, self.backend.multiple,
                           None if win is None else win[i]) for i, n in enumerate(shape[1:])]
        return TileGrid(shape[0], *plans)

    def predict(self, em: np.ndarray) -> np.ndarray:
        """(z, y, x) uint8 EM -> (z, C, y, x) float32 probabilities summing to 1 over C."""
        if em.ndim != 3:
            raise ValueError(f"expected a (z, y, x) stack, got shape {em.shape}; "
                             "use em[None] for one section")
        grid = self.grid(em.shape)
        stitcher = Stitcher(grid, self.n_classes, self.blend)
        if not len(grid):
            return stitcher.result()
        padded = grid.pad(preprocess(em, self.preprocessing))
        wy, wx = grid.window
        batch = np.empty((self.batch_size, 1, wy, wx), np.float32)
        tiles = list(grid.tiles())
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start: start + self.batch_size]
            for i, t in enumerate(chunk):
                batch[i, 0] = padded[t.z, t.y: t.y + wy, t.x: t.x + wx]
            probs = self.backend.run(batch[: len(chunk)])
            for t, p in zip(chunk, probs, strict=True):
                stitcher.add(t, p)
        return stitcher.result()


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d just before it (in place): one pass
    over memory less per layer, identical output up to rounding."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return model


def _conv_part(conv: nn.Conv2d, channels: slice, bias: bool) -> nn.Conv2d:
    """The convolution restricted to some input channels (with or without the bias)."""
    weight = conv.weight.detach()[:, channels]
    part = nn.Conv2d(weight.shape[1], conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, bias=bias and conv.bias is not None)
    part.weight.data.copy_(weight)
    if part.bias is not None:
        part.bias.data.copy_(conv.bias.detach())
    return part


class InferenceUNet(nn.Module):
    """An inference-only rewrite of a :class:`UNet` with the same output: BatchNorm folded
    into the convolutions, and each decoder stage's ``conv(cat(up, skip))`` computed as
    ``conv_up(up) + conv_skip(skip)``, which never materialises the concatenation (a full
    memory pass per stage, ~15% of CPU time)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        net = fuse_batchnorm(_copy_eval(unet))
        self.config = net.config
        self.down, self.pool, self.bridge, self.up = net.down, net.pool, net.bridge, net.up
        self.head = net.head
        self.up_first = nn.ModuleList()
        self.skip_first = nn.ModuleList()
        self.up_rest = nn.ModuleList()
        for block in net.up_conv:
            first, *rest = list(block)
            half = first.in_channels // 2  # UNet.forward concatenates [up(x), skip]
            self.up_first.append(_conv_part(first, slice(0, half), bias=True))
            self.skip_first.append(_conv_part(first, slice(half, None), bias=False))
            self.up_rest.append(nn.Sequential(*rest))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, a, b, rest, skip in zip(self.up, self.up_first, self.skip_first, self.up_rest,
                                        reversed(skips), strict=True):
            y = a(up(x))
            y += b(skip)
            x = rest(y)
        return self.head(x)


class TorchBackend:
    """PyTorch backend: :class:`InferenceUNet` in inference mode, channels-last, bf16
    autocast on CUDA, optionally ``torch.compile`` (with freezing: constant weights let
    Inductor prepack them and fuse convolution + ReLU)."""

    def __init__(self, model: UNet, device: str | torch.device = "auto", amp: bool = True,
                 compile: bool = False) -> None:
        if model.config.in_channels != 1:
            raise ValueError(f"engines feed one EM channel; model has {model.config.in_channels}")
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
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _copy_eval(model: UNet) -> UNet:
    """An eval-mode copy on CPU, so rewriting never touches the caller's (maybe training) net."""
    copy = UNet(model.config)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def load_predictor(model: str | Path | Checkpoint, backend: str = "auto",
                   device: str = "auto", tile: int | None = None, margin: int = 64,
                   overlap: int = 0, blend: str = "none", batch_size: int | None = None,
                   compile: bool = False) -> TiledPredictor:
    """A predictor for a checkpoint (``.pt`` path or :class:`Checkpoint`) or an ``.onnx`` file.

    ``backend``: ``torch``, ``onnx`` (ONNX Runtime; a checkpoint is exported in memory) or
    ``auto`` (ONNX Runtime for ``.onnx`` files and on the CPU, where it measured 1.3-1.5x
    faster than PyTorch (bench/predict.py); PyTorch on CUDA / MPS or with ``compile``).
    ``compile`` applies to PyTorch only.
    See :class:`EngineConfig` for the tiling arguments.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    config = EngineConfig(tile=tile, margin=margin, overlap=overlap, blend=blend,
                          batch_size=batch_size)
    is_onnx = isinstance(model, str | Path) and Path(model).suffix.lower() == ".onnx"
    if backend == "auto":
        on_cpu = pick_device(device).type == "cpu"
        backend = "onnx" if is_onnx or (on_cpu and not compile) else "torch"
    if is_onnx and backend == "torch":
        raise ValueError(f"{model} is an ONNX model: use backend='onnx' (or 'auto')")
    if backend == "onnx":
        from membrane_py.transfer.onnx import OnnxBackend, onnx_model

        if compile:
            raise ValueError("compile=True needs backend='torch'")
        source = model if is_onnx else onnx_model(_checkpoint(model)).SerializeToString()
        runtime = OnnxBackend(source, device=device)
        return TiledPredictor(runtime, runtime.info.class_names, runtime.info.preprocess, config)
    ck = _checkpoint(model)
    net = TorchBackend(ck.build_model(), device=device, compile=compile)
    return TiledPredictor(net, ck.class_names, ck.preprocess_config, config)


def _checkpoint(model: str | Path | Checkpoint) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)
