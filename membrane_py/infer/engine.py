"""Tiled inference engines: one :class:`TiledPredictor`, pluggable compute backends.

The predictor owns everything that does not depend on the runtime (preprocessing from the
checkpoint, reflect-padded context, the tile grid, batching across sections, stitching and
blending; see :mod:`membrane_py.infer.tiling`). A backend only turns a batch of
preprocessed windows into class probabilities: PyTorch in
:mod:`membrane_py.infer.torch_backend`, ONNX Runtime in :mod:`membrane_py.infer.onnx_backend`.
``load_predictor`` builds either from a checkpoint or an ``.onnx`` file, in the precision
asked for (:mod:`membrane_py.infer.precision`).

Test-time augmentation (``tta`` > 1) runs every tile through the first ``tta`` of the 8
flips / rotations of the square (:data:`DIHEDRAL`), maps each prediction back and averages
them; the spread between them is the uncertainty (:meth:`TiledPredictor.predict_with_uncertainty`).
Without augmentation the uncertainty is the binary entropy of the probabilities
(:func:`binary_entropy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.infer.precision import resolve_precision
from membrane_py.infer.tiling import BLENDS, Stitcher, TileGrid, plan_axis
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint, model_path
from membrane_py.train.device import pick_device

BACKENDS = ("auto", "torch", "onnx")
#: default core side: one tile per 1024^2 chunk section keeps the margin overhead at 27%
#: (1152^2 computed per 1024^2 kept); 512 tiles (56% overhead) were ~20% slower on CPU
DEFAULT_TILE = 1024
#: the dihedral group of the square as (transpose, flip y, flip x): an image is flipped,
#: then transposed. The first four keep the window's orientation (identity, flips, 180
#: degree rotation), so ``tta`` <= 4 also works with fixed non-square windows; with all 8
#: the 90 and 270 degree rotations and both diagonal mirrors follow.
DIHEDRAL = tuple((t, fy, fx) for t in (False, True) for fy in (False, True)
                 for fx in (False, True))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits (0..1) of a yes/no decision with probability ``p``: 0 where the
    network is sure, 1 at p = 0.5."""
    p = np.clip(p, 1e-7, 1.0 - 1e-7)
    return -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))


def dihedral(a: np.ndarray, g: tuple[bool, bool, bool]) -> np.ndarray:
    """Element ``g`` of :data:`DIHEDRAL` applied to the last two axes (contiguous copy)."""
    t, fy, fx = g
    a = a[..., ::-1, :] if fy else a
    a = a[..., ::-1] if fx else a
    return np.ascontiguousarray(a.swapaxes(-1, -2) if t else a)


def dihedral_inverse(a: np.ndarray, g: tuple[bool, bool, bool]) -> np.ndarray:
    """Undo :func:`dihedral` with the same ``g`` (a view)."""
    t, fy, fx = g
    a = a.swapaxes(-1, -2) if t else a
    a = a[..., ::-1, :] if fy else a
    return a[..., ::-1] if fx else a


@dataclass(frozen=True)
class EngineConfig:
    """How sections are cut into network inputs.

    ``tile`` is the target core side (output pixels per tile; ``None``: :data:`DEFAULT_TILE`),
    ``margin`` the context added on each side, ``overlap`` how far neighbouring cores overlap
    (blended with ``blend``), ``batch_size`` tiles per forward pass (``None``: per-device
    default, :func:`default_batch_size`). ``tta`` is how many of the 8 :data:`DIHEDRAL`
    transforms each tile is predicted under (1: none, 4: flips, 8: flips and rotations).
    """

    tile: int | None = None
    margin: int = 64
    overlap: int = 0
    blend: str = "none"
    batch_size: int | None = None
    tta: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.tta <= len(DIHEDRAL):
            raise ValueError(f"tta must be 1 (off) .. {len(DIHEDRAL)} (all flips and "
                             f"rotations), got {self.tta}")
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
    """A :class:`~membrane_py.infer.predictor.Predictor` over any backend. ``threshold``:
    the membrane threshold the model recorded (whole-section validation), None if none."""

    def __init__(self, backend: Backend, class_names: list[str], preprocessing: PreprocessConfig,
                 config: EngineConfig | None = None, model_sha256: str = "",
                 threshold: float | None = None) -> None:
        config = config or EngineConfig()
        self.threshold = threshold
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
        self.transforms = DIHEDRAL[: config.tta]
        win = backend.window
        if config.tta > 4 and win is not None and win[0] != win[1]:
            raise ValueError(f"tta {config.tta} rotates tiles, but the model takes fixed "
                             f"{win[0]}x{win[1]} inputs; use tta <= 4 (flips only)")

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
        return self._predict(em, uncertainty=False)[0]

    def predict_with_uncertainty(self, em: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities as :meth:`predict` and the (z, y, x) float32 uncertainty in [0, 1].

        With test-time augmentation: twice the largest (over classes) standard deviation of
        the class probability between the augmented predictions (a standard deviation of
        values in [0, 1] is at most 0.5). Without: the largest (over classes) binary
        entropy of the class probability (:func:`binary_entropy`; for a membrane network,
        the entropy of the membrane probability)."""
        probs, spread = self._predict(em, uncertainty=True)
        return probs, spread[:, 0]

    def _predict(self, em: np.ndarray, uncertainty: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if em.ndim != 3:
            raise ValueError(f"expected a (z, y, x) stack, got shape {em.shape}; "
                             "use em[None] for one section")
        grid = self.grid(em.shape)
        stitcher = Stitcher(grid, self.n_classes, self.blend)
        spread = Stitcher(grid, 1, self.blend) if uncertainty else None
        if not len(grid):
            return stitcher.result(), None if spread is None else spread.result()
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
            probs, spreads = self._run_augmented(batch[: len(chunk)], uncertainty)
            for i, t in enumerate(chunk):
                stitcher.add(t, probs[i])
                if spread is not None:
                    spread.add(t, spreads[i])
        return stitcher.result(), None if spread is None else spread.result()

    def _run_augmented(self, batch: np.ndarray, uncertainty: bool
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean probabilities over the transforms and, when asked, the uncertainty
        (N, 1, H, W) of :meth:`predict_with_uncertainty`."""
        if len(self.transforms) == 1:
            probs = self.backend.run(batch)
            if not uncertainty:
                return probs, None
            return probs, binary_entropy(probs).max(axis=1, keepdims=True)
        total = squares = None
        for g in self.transforms:
            p = dihedral_inverse(self.backend.run(dihedral(batch, g)), g)
            total = p.copy() if total is None else total + p
            if uncertainty:
                squares = p * p if squares is None else squares + p * p
        n = len(self.transforms)
        mean = total / n
        if not uncertainty:
            return mean, None
        std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
        return mean, np.minimum(2.0 * std.max(axis=1, keepdims=True), 1.0)


def load_predictor(model: str | Path | Checkpoint, backend: str = "auto",
                   device: str = "auto", tile: int | None = None, margin: int = 64,
                   overlap: int = 0, blend: str = "none", batch_size: int | None = None,
                   compile: bool = False, threads: int | None = None, tta: int = 1,
                   precision: str = "auto",
                   calibration: Callable[[], np.ndarray] | None = None,
                   adapt_bn: Callable[[], Iterable[np.ndarray]] | None = None
                   ) -> TiledPredictor:
    """A predictor for a checkpoint (``.pt`` path, ``"starter"`` or :class:`Checkpoint`) or an
    ``.onnx`` file.

    ``backend``: ``torch``, ``onnx`` (ONNX Runtime; a checkpoint is exported in memory) or
    ``auto`` (ONNX Runtime for ``.onnx`` files and on the CPU, where it measured 1.3-1.5x
    faster than PyTorch (bench/predict.py); PyTorch on CUDA / MPS or with ``compile``);
    ``bf16`` always runs on PyTorch and ``int8`` on ONNX Runtime.
    ``compile`` applies to PyTorch only. ``precision``: ``fp32``, ``bf16``, ``int8`` or
    ``auto`` (:func:`~membrane_py.infer.precision.resolve_precision`). ``int8`` quantises
    the model, calibrated on ``calibration()``, (z, y, x) uint8 sample EM (ideally from the
    volume to predict), and keeps it next to a checkpoint file
    (:mod:`membrane_py.infer.quantize`). ``tta``: test-time augmentation, see
    :class:`EngineConfig` (class networks only: flips and rotations would move affinity
    channels). ``adapt_bn``: sample EM, uint8 (y, x) sections or patches of the volume to
    predict, on which the batch-norm statistics are re-estimated first
    (:mod:`membrane_py.infer.batchnorm`; checkpoints only). ``threads`` caps the CPU threads
    of the ONNX Runtime session (PyTorch's are
    process-wide: ``torch.set_num_threads``). See :class:`EngineConfig` for the tiling
    arguments.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    config = EngineConfig(tile=tile, margin=margin, overlap=overlap, blend=blend,
                          batch_size=batch_size, tta=tta)
    if isinstance(model, str | Path):
        model = model_path(model)
    is_onnx = isinstance(model, Path) and model.suffix.lower() == ".onnx"
    device_type = pick_device(device).type
    fixed = "onnx" if is_onnx else backend if backend != "auto" else None
    ck = None if is_onnx else _checkpoint(model)
    if adapt_bn is not None:
        if ck is None:
            raise ValueError("batch-norm adaptation needs the .pt checkpoint (an ONNX export "
                             "has its batch norm folded into the convolutions)")
        from membrane_py.infer.batchnorm import adapt_batch_norm

        ck = adapt_batch_norm(ck, adapt_bn())
        model = ck  # an in-memory network: an int8 model of it is not cached
    if ck is not None and ck.model_config.arch == "unet3d":
        raise ValueError("a 3D U-Net (arch unet3d) predicts cubes, not 2D tiles: use "
                         "membrane_py.infer.cubes.predict_cubes")
    plain = ck is None or (ck.target == "classes" and ck.context == 0)
    if backend == "onnx" and not plain:
        raise ValueError("the ONNX export holds one-section class networks; run this "
                         "affinity / 2.5D checkpoint with backend='torch' (or 'auto')")
    if not plain and (tta > 1 or precision == "int8"):
        raise ValueError("test-time augmentation and int8 are for class networks; run this "
                         "affinity / 2.5D checkpoint with tta=1 and precision fp32 or bf16")
    precision = "fp32" if precision == "auto" and fixed == "onnx" else resolve_precision(
        precision, device_type, None if ck is None else ck.model_config.base_filters)
    if precision == "bf16" and fixed == "onnx":
        raise ValueError("bf16 runs on the PyTorch backend: use backend torch (or auto) with "
                         "a .pt checkpoint")
    if precision == "int8" and (fixed == "torch" or compile):
        raise ValueError("int8 runs on the ONNX Runtime backend: use backend onnx (or auto) "
                         "without compile")
    if backend == "auto":
        backend = "onnx" if is_onnx or precision == "int8" or (
            device_type == "cpu" and not compile and precision == "fp32" and plain) else "torch"
    if is_onnx and backend == "torch":
        raise ValueError(f"{model} is an ONNX model: use backend='onnx' (or 'auto')")
    if backend == "onnx":
        from membrane_py.infer.onnx_backend import OnnxBackend, onnx_model

        if compile:
            raise ValueError("compile=True needs backend='torch'")

        def fp32() -> bytes:
            return onnx_model(ck).SerializeToString()

        data = _int8(model, ck, fp32, calibration) if precision == "int8" else \
            model if ck is None else fp32()
        runtime = OnnxBackend(data, device=device, threads=threads)
        return TiledPredictor(runtime, runtime.info.class_names, runtime.info.preprocess, config,
                              runtime.tensors_sha256 if ck is None else ck.digest(),
                              runtime.info.threshold if ck is None else ck.threshold)
    from membrane_py.infer.torch_backend import TorchBackend

    activation = "sigmoid" if ck.target == "affinities" else "softmax"
    net = TorchBackend(ck.build_model(), device=device, precision=precision, compile=compile,
                       activation=activation)
    return TiledPredictor(net, ck.class_names, ck.preprocess_config, config, ck.digest(),
                          ck.threshold)


def _int8(model: str | Path | Checkpoint, ck: Checkpoint | None, fp32: Callable[[], bytes],
          calibration: Callable[[], np.ndarray] | None) -> bytes:
    """The int8 model of the checkpoint ``ck`` (exported by ``fp32()``) or of the ONNX file
    ``model``, cached next to a model file (see :func:`load_predictor`); ``fp32`` and
    ``calibration`` are called only to quantise."""
    from membrane_py.infer.onnx_backend import OnnxModelInfo, read_onnx
    from membrane_py.infer.quantize import cached_int8, calibration_patches, int8_cache_path

    data = None if ck is not None else read_onnx(model)[0]  # checked, errors name the file

    def source() -> bytes:
        return data if data is not None else fp32()

    def batches() -> list[np.ndarray]:
        if calibration is None:
            raise ValueError("int8 needs sample EM to calibrate on (calibration=...; predict "
                             "takes it from the volume, or --calibration FOLDER)")
        pre = ck.preprocess_config if ck is not None else \
            (read_onnx(source())[1] or OnnxModelInfo(class_names=[])).preprocess
        return [preprocess(p, pre)[None] for p in calibration_patches(calibration())]

    cache = None
    if isinstance(model, str | Path):
        digest = ck.digest() if ck is not None else read_onnx(source())[2]
        cache = int8_cache_path(model, digest)
    return cached_int8(source, batches, cache)


def _checkpoint(model: str | Path | Checkpoint) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model)
