"""Tiled inference engines: one :class:`TiledPredictor`, pluggable compute backends.

The predictor owns everything that does not depend on the runtime (preprocessing from the
checkpoint, reflect-padded context, the tile grid, batching across sections, stitching and
blending; see :mod:`membrane_py.infer.tiling`). A backend only turns a batch of
preprocessed windows into class probabilities: PyTorch in
:mod:`membrane_py.infer.torch_backend`, ONNX Runtime in :mod:`membrane_py.infer.onnx_backend`.
``load_predictor`` builds either from a checkpoint or an ``.onnx`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.infer.tiling import BLENDS, Stitcher, TileGrid, plan_axis
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint
from membrane_py.train.device import pick_device

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
    in_channels: int  # 1, or 2 * context + 1 sections for a 2.5D network
    multiple: int  # input sides must be multiples of this
    window: tuple[int, int] | None  # fixed input (height, width), or None when any works
    max_batch: int | None  # fixed batch size of the model, or None
    device_type: str  # "cpu", "cuda", ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, in_channels, H, W) float32 -> (N, C, H, W) float32 probabilities (softmax
        over classes, or a sigmoid per channel for affinity networks)."""
        ...


class TiledPredictor:
    """A :class:`~membrane_py.infer.predictor.Predictor` over any backend."""

    def __init__(self, backend: Backend, class_names: list[str], preprocessing: PreprocessConfig,
                 config: EngineConfig | None = None, model_sha256: str = "") -> None:
        config = config or EngineConfig()
        if len(class_names) != backend.n_classes:
            raise ValueError(f"{len(class_names)} class names for a {backend.n_classes}-class "
                             "model")
        self.backend = backend
        self.model_sha256 = model_sha256
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
        """(z, y, x) uint8 EM -> (z, C, y, x) float32 probabilities (summing to 1 over C
        for class networks; one independent probability per channel for affinities).

        A 2.5D network (``in_channels = 2 * context + 1``) sees sections ``z - context ..
        z + context`` of ``em`` as channels; beyond the first and last section the edge
        section repeats, so predict a stack with real neighbours where they exist."""
        if em.ndim != 3:
            raise ValueError(f"expected a (z, y, x) stack, got shape {em.shape}; "
                             "use em[None] for one section")
        grid = self.grid(em.shape)
        stitcher = Stitcher(grid, self.n_classes, self.blend)
        if not len(grid):
            return stitcher.result()
        padded = grid.pad(preprocess(em, self.preprocessing))
        wy, wx = grid.window
        channels = self.backend.in_channels
        context = np.arange(channels) - channels // 2
        batch = np.empty((self.batch_size, channels, wy, wx), np.float32)
        tiles = list(grid.tiles())
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start: start + self.batch_size]
            for i, t in enumerate(chunk):
                zs = np.clip(t.z + context, 0, em.shape[0] - 1)
                batch[i] = padded[zs, t.y: t.y + wy, t.x: t.x + wx]
            probs = self.backend.run(batch[: len(chunk)])
            for t, p in zip(chunk, probs, strict=True):
                stitcher.add(t, p)
        return stitcher.result()


def load_predictor(model: str | Path | Checkpoint, backend: str = "auto",
                   device: str = "auto", tile: int | None = None, margin: int = 64,
                   overlap: int = 0, blend: str = "none", batch_size: int | None = None,
                   compile: bool = False, threads: int | None = None) -> TiledPredictor:
    """A predictor for a checkpoint (``.pt`` path or :class:`Checkpoint`) or an ``.onnx`` file.

    ``backend``: ``torch``, ``onnx`` (ONNX Runtime; a checkpoint is exported in memory) or
    ``auto`` (ONNX Runtime for ``.onnx`` files and on the CPU, where it measured 1.3-1.5x
    faster than PyTorch (bench/predict.py); PyTorch on CUDA / MPS or with ``compile``).
    ``compile`` applies to PyTorch only. ``threads`` caps the CPU threads of the ONNX
    Runtime session (PyTorch's are process-wide: ``torch.set_num_threads``).
    See :class:`EngineConfig` for the tiling arguments.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    config = EngineConfig(tile=tile, margin=margin, overlap=overlap, blend=blend,
                          batch_size=batch_size)
    is_onnx = isinstance(model, str | Path) and Path(model).suffix.lower() == ".onnx"
    ck = None if is_onnx else _checkpoint(model)
    plain = ck is None or (ck.target == "classes" and ck.context == 0)
    if backend == "onnx" and not plain:
        raise ValueError("the ONNX export holds one-section class networks; run this "
                         "affinity / 2.5D checkpoint with backend='torch' (or 'auto')")
    if backend == "auto":
        on_cpu = pick_device(device).type == "cpu"
        backend = "onnx" if is_onnx or (on_cpu and not compile and plain) else "torch"
    if is_onnx and backend == "torch":
        raise ValueError(f"{model} is an ONNX model: use backend='onnx' (or 'auto')")
    if backend == "onnx":
        from membrane_py.infer.onnx_backend import OnnxBackend, onnx_model

        if compile:
            raise ValueError("compile=True needs backend='torch'")
        runtime = OnnxBackend(model if ck is None else onnx_model(ck).SerializeToString(),
                              device=device, threads=threads)
        return TiledPredictor(runtime, runtime.info.class_names, runtime.info.preprocess, config,
                              runtime.tensors_sha256 if ck is None else ck.digest())
    from membrane_py.infer.torch_backend import TorchBackend

    activation = "sigmoid" if ck.target == "affinities" else "softmax"
    net = TorchBackend(ck.build_model(), device=device, compile=compile, activation=activation)
    return TiledPredictor(net, ck.class_names, ck.preprocess_config, config, ck.digest())


def _checkpoint(model: str | Path | Checkpoint) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)
