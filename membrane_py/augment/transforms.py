"""Patch augmentations, applied consistently to an EM patch (uint8) and its label patch.

Geometric transforms (flips, 90-degree rotations, elastic deformation) move image and label
together, labels by nearest neighbour; intensity transforms (blur, motion blur, histogram
equalisation / CLAHE, brightness-contrast-gamma) touch the image only. Every random choice
comes from the ``numpy.random.Generator`` passed in, so a (seed, index) pair is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from membrane_py.augment.preprocess import apply_clahe

EQUALIZE_MODES = ("none", "hist", "clahe", "random")
#: augmentations a user names (``--augmentations blur,elastic``), besides flips and rot90
AUGMENTATIONS = ("blur", "motion_blur", "equalize", "intensity", "elastic")


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strong they are (probabilities are per patch)."""

    flip: bool = True
    rot90: bool = True
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    motion_blur_prob: float = 0.0
    motion_blur_length: tuple[int, int] = (3, 9)
    equalize: str = "none"  # "hist", "clahe" or "random" (either)
    equalize_prob: float = 0.5
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    brightness: float = 0.0  # max shift as a fraction of 255
    contrast: float = 0.0  # max relative change of the contrast
    gamma: float = 0.0  # gamma drawn from exp(U(-gamma, gamma))
    elastic_prob: float = 0.0
    elastic_alpha: float = 8.0  # displacement scale in pixels
    elastic_sigma: float = 12.0  # smoothness of the displacement field in pixels

    def __post_init__(self) -> None:
        if self.equalize not in EQUALIZE_MODES:
            raise ValueError(f"equalize must be one of {EQUALIZE_MODES}, got {self.equalize!r}")
        for name in ("blur_prob", "motion_blur_prob", "equalize_prob", "elastic_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")

    @classmethod
    def all_on(cls) -> AugmentConfig:
        """Every augmentation enabled at moderate strength (benchmarks, strong regularisation)."""
        return cls(blur_prob=0.3, motion_blur_prob=0.3, equalize="random", equalize_prob=0.3,
                   brightness=0.1, contrast=0.2, gamma=0.3, elastic_prob=0.3)

    @classmethod
    def from_names(cls, names: list[str], flips: bool = True) -> AugmentConfig:
        """Flips and rot90 (when ``flips``) plus the named :data:`AUGMENTATIONS` (``all`` for
        every one, ``none`` for none) at the strengths of :meth:`all_on`."""
        unknown = sorted(set(names) - {*AUGMENTATIONS, "all", "none"})
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}; choose from "
                             f"{', '.join(AUGMENTATIONS)}, all or none")
        if "none" in names and len(set(names)) > 1:
            raise ValueError("augmentations: 'none' cannot be combined with others")
        on = set(AUGMENTATIONS) if "all" in names else set(names)
        full = cls.all_on()
        return cls(
            flip=flips, rot90=flips,
            blur_prob=full.blur_prob if "blur" in on else 0.0,
            motion_blur_prob=full.motion_blur_prob if "motion_blur" in on else 0.0,
            equalize=full.equalize if "equalize" in on else "none",
            equalize_prob=full.equalize_prob,
            brightness=full.brightness if "intensity" in on else 0.0,
            contrast=full.contrast if "intensity" in on else 0.0,
            gamma=full.gamma if "intensity" in on else 0.0,
            elastic_prob=full.elastic_prob if "elastic" in on else 0.0)

    def enabled(self) -> list[str]:
        """Names of the augmentations this config can apply."""
        names = [n for n, on in (("flip", self.flip), ("rot90", self.rot90),
                                 ("gaussian_blur", self.blur_prob > 0),
                                 ("motion_blur", self.motion_blur_prob > 0),
                                 (f"equalize_{self.equalize}", self.equalize != "none"),
                                 ("brightness", self.brightness > 0),
                                 ("contrast", self.contrast > 0), ("gamma", self.gamma > 0),
                                 ("elastic", self.elastic_prob > 0)) if on]
        return names


def flip_rotate(image: np.ndarray, label: np.ndarray, flip: bool, k: int):
    """Mirror left-right (optionally), then rotate by k * 90 degrees; same for both."""
    if flip:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(np.rot90(label, k))


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def motion_blur(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Average along a line of ``length`` pixels at ``angle`` degrees (camera/stage motion)."""
    kernel = np.zeros((length, length), dtype=np.float32)
    kernel[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((length - 1) / 2.0, (length - 1) / 2.0), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length), flags=cv2.INTER_LINEAR)
    kernel /= max(kernel.sum(), 1e-6)
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def brightness_contrast_gamma(image: np.ndarray, shift: float, gain: float,
                              gamma: float) -> np.ndarray:
    """``255 * ((x/255 - 0.5) * gain + 0.5 + shift) ** gamma`` clipped to uint8, via a lookup."""
    x = np.arange(256, dtype=np.float64) / 255.0
    y = np.clip((x - 0.5) * gain + 0.5 + shift, 0.0, 1.0) ** gamma
    lut = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return lut[image]


def elastic(image: np.ndarray, label: np.ndarray, alpha: float, sigma: float,
            rng: np.random.Generator):
    """Smooth random displacement field; image bilinear, label nearest, borders mirrored."""
    ny, nx = image.shape
    field = rng.uniform(-1.0, 1.0, size=(2, ny, nx)).astype(np.float32)
    dx = cv2.GaussianBlur(field[0], (0, 0), sigma)
    dy = cv2.GaussianBlur(field[1], (0, 0), sigma)
    scale = alpha / max(float(np.abs(np.stack([dx, dy])).max()), 1e-6)
    gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    map_x, map_y = gx + dx * scale, gy + dy * scale
    out_image = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_label = cv2.remap(label, map_x, map_y, cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT_101)
    return out_image, out_label


def augment_pair(image: np.ndarray, label: np.ndarray, cfg: AugmentConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Augment one uint8 EM patch and its label patch; returns both plus the parameters drawn."""
    if image.dtype != np.uint8 or image.shape != label.shape:
        raise ValueError(f"expected a uint8 image and a label of the same shape, got "
                         f"{image.dtype} {image.shape} and {label.shape}")
    label = label.astype(np.uint16, copy=False)
    applied: dict = {}
    flip = bool(cfg.flip and rng.random() < 0.5)
    k = int(rng.integers(4)) if cfg.rot90 else 0
    if flip or k:
        image, label = flip_rotate(image, label, flip, k)
        applied.update(flip=flip, rot90=k)
    if cfg.elastic_prob and rng.random() < cfg.elastic_prob:
        image, label = elastic(image, label, cfg.elastic_alpha, cfg.elastic_sigma, rng)
        applied["elastic"] = True
    if cfg.blur_prob and rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(*cfg.blur_sigma))
        image = gaussian_blur(image, sigma)
        applied["blur_sigma"] = sigma
    if cfg.motion_blur_prob and rng.random() < cfg.motion_blur_prob:
        length = int(rng.integers(cfg.motion_blur_length[0], cfg.motion_blur_length[1] + 1))
        angle = float(rng.uniform(0.0, 180.0))
        image = motion_blur(image, length, angle)
        applied["motion_blur"] = [length, angle]
    if cfg.equalize != "none" and rng.random() < cfg.equalize_prob:
        mode = cfg.equalize if cfg.equalize != "random" else ("hist", "clahe")[rng.integers(2)]
        image = (cv2.equalizeHist(image) if mode == "hist"
                 else apply_clahe(image, cfg.clahe_clip_limit, cfg.clahe_tile_grid))
        applied["equalize"] = mode
    if cfg.brightness or cfg.contrast or cfg.gamma:
        shift = float(rng.uniform(-cfg.brightness, cfg.brightness))
        gain = float(1.0 + rng.uniform(-cfg.contrast, cfg.contrast))
        gamma = float(math.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
        image = brightness_contrast_gamma(image, shift, gain, gamma)
        applied["intensity"] = [shift, gain, gamma]
    return image, label, applied
