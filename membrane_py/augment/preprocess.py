"""Input preprocessing shared by training and prediction.

The settings travel inside every checkpoint, so prediction repeats exactly what training
did (mEMbrain applied CLAHE at prediction only; we never mix the two).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PreprocessConfig:
    """How a uint8 EM image becomes network input: optional CLAHE, then (x/255 - mean) / std."""

    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    mean: float = 0.5
    std: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def apply_clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a 2D uint8 image (OpenCV)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"CLAHE expects a 2D uint8 image, got {image.dtype} {image.shape}")
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(np.ascontiguousarray(image))


def preprocess(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 image(s) (..., y, x) -> float32 network input of the same shape."""
    if image.dtype != np.uint8:
        raise ValueError(f"EM input must be uint8, got {image.dtype}; convert or rescale it first")
    if cfg.clahe:
        flat = image.reshape(-1, *image.shape[-2:])
        eq = [apply_clahe(s, cfg.clahe_clip_limit, cfg.clahe_tile_grid) for s in flat]
        image = np.stack(eq).reshape(image.shape)
    out = image.astype(np.float32)
    out *= 1.0 / (255.0 * cfg.std)
    out -= cfg.mean / cfg.std
    return out
