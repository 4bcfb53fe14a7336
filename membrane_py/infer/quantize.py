"""int8 models: ONNX Runtime static quantisation of an exported network, calibrated on EM.

:func:`quantize_int8` quantises an fp32 ONNX model (QDQ format, weights signed 8-bit per
output channel, activations unsigned 8-bit per tensor with ranges from min / max over the
calibration batches: the layout ONNX Runtime runs with VNNI integer dot products on x86).
Calibration data are preprocessed EM patches, ideally from the volume being predicted:
activation ranges fitted to other data clip or waste the 8 bits.

:func:`cached_int8` keeps the quantised model next to its checkpoint as
``<stem>.int8-<sha256[:16]>.onnx``, keyed by the weights' digest, so a volume is calibrated
once and every later run (a resumed one too) uses the same int8 model (the starter model's,
and that of a checkpoint in a read-only folder, in the user cache instead). The first
calibration wins: delete the file to calibrate again on other EM.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from membrane_py.atomic import atomic_path
from membrane_py.infer.onnx_backend import METADATA_KEY, onnx_tensors_sha256, read_onnx

#: side and number of the calibration patches cut from sample EM
CALIBRATION_SIDE = 256
CALIBRATION_PATCHES = 8


def calibration_patches(em: np.ndarray, side: int = CALIBRATION_SIDE,
                        n: int = CALIBRATION_PATCHES, seed: int = 0) -> np.ndarray:
    """``n`` (1, side, side) patches of (z, y, x) ``em``, section after section in turn, at
    random positions (sides shrink to the sections' when these are smaller), as
    (n, 1, side, side)."""
    if em.ndim != 3 or em.size == 0:
        raise ValueError(f"calibration EM must be a non-empty (z, y, x) stack, got {em.shape}")
    rng = np.random.default_rng(seed)
    sy, sx = min(side, em.shape[1]), min(side, em.shape[2])
    out = np.empty((n, 1, sy, sx), em.dtype)
    for i in range(n):
        z = i % em.shape[0]
        y, x = rng.integers(em.shape[1] - sy + 1), rng.integers(em.shape[2] - sx + 1)
        out[i, 0] = em[z, y:y + sy, x:x + sx]
    return out


def quantize_int8(model: bytes, batches: list[np.ndarray]) -> bytes:
    """The int8 QDQ model of an fp32 ONNX model, calibrated on preprocessed float32
    ``batches`` (each (N, 1, H, W)); membrane-py metadata is kept with the new tensor
    digest."""
    from onnxruntime.quantization import CalibrationDataReader

    _, info, _ = read_onnx(model)
    proto = onnx.load_from_string(model)
    name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.items, None)
            return None if batch is None else {name: batch}

    # the quantiser logs a warning per float bias and a pre-processing hint: noise here
    logging.disable(logging.WARNING)
    try:
        quant = _quantize_file(model, Reader())
    finally:
        logging.disable(logging.NOTSET)
    if info is not None:
        info = replace(info, tensors_sha256=onnx_tensors_sha256(quant))
        del quant.metadata_props[:]
        onnx.helper.set_model_props(quant, {METADATA_KEY: info.to_json()})
    return quant.SerializeToString()


def _quantize_file(model: bytes, reader: object) -> onnx.ModelProto:
    """quantize_static through temporary files (it reads and writes paths)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="membrane_int8_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(str(dst))


def int8_cache_path(checkpoint: str | Path, sha256: str) -> Path:
    """Where :func:`cached_int8` keeps the int8 model of ``checkpoint``: next to it, or in
    the user cache for the shipped starter model and folders this user cannot write."""
    from membrane_py.train.checkpoint import model_path, starter_path
    from membrane_py.volumes.hdf5 import cache_dir

    path = model_path(checkpoint)
    name = f"{path.stem}.int8-{sha256[:16]}.onnx"
    if path == starter_path() or not os.access(path.parent, os.W_OK):
        return cache_dir().parent / "int8" / name
    return path.with_name(name)


def cached_int8(fp32: Callable[[], bytes], batches: Callable[[], list[np.ndarray]],
                cache: Path | None) -> bytes:
    """The int8 model: read from ``cache`` when it exists, else quantised from ``fp32()``
    calibrated on ``batches()`` and written there atomically (``cache`` None: not kept)."""
    if cache is not None and cache.is_file():
        return cache.read_bytes()
    model = quantize_int8(fp32(), batches())
    if cache is not None:
        with atomic_path(cache) as tmp:
            Path(tmp).write_bytes(model)
    return model

