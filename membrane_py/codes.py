"""Pixel codes, each defined here and nowhere else: 8-bit probabilities, class codes,
ids <-> RGB, and PNG files.

- Probability tiles: p in [0, 1] -> ``1 + round(254 p)`` (1..255, likely = bright). 0 is
  reserved for "missing" (VAST shows absent tiles black), so a decoder must say what a
  missing pixel means to it. Decoding is ``(v - 1) / 254``; a round trip is exact to 1/508.
- Label PNGs (training patches, the evaluation's class pictures): class k of K ->
  ``round(255 (k - 1) / (K - 1))``, mEMbrain's code ({0, 255} for 2 classes, {0, 128, 255}
  for 3). Every pixel has a class, so 0 is class 1 here.
- Class tiles (prediction layers shown in VAST): class k of K -> ``round(255 k / K)``
  ({128, 255} for 2 classes), which keeps 0 free for "missing" as in probability tiles.
  The two class codes differ on purpose: patches must stay readable by mEMbrain, tiles
  need the free 0.
- Ids as RGB: ``id = R * 65536 + G * 256 + B`` (VAST's and mEMbrain's label import),
  lossless below 2**24. :func:`palette_rgb` gives display colours, which do not decode.
- PNG: one encoder and one decoder (OpenCV), arrays in R, G, B order, writes atomic.

Every rounding is half up (MATLAB's ``round`` for the non-negative values here).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from membrane_py.atomic import write_bytes_atomic

#: the 8-bit value of a pixel no prediction wrote (absent tile, padding)
MISSING = 0
#: ids from this value up have no RGB code
RGB_ID_LIMIT = 1 << 24


def _round(x: np.ndarray) -> np.ndarray:
    """Round half up (non-negative inputs), as MATLAB and mEMbrain do."""
    return np.floor(x + 0.5)


# --- probabilities -------------------------------------------------------------------------


def probability_to_u8(p: np.ndarray) -> np.ndarray:
    """Probabilities (clipped to [0, 1]) -> uint8 ``1 + round(254 p)``; 0 is never written."""
    return (_round(np.clip(p, 0.0, 1.0) * 254.0) + 1.0).astype(np.uint8)


def u8_to_probability(codes: np.ndarray, *, missing: float) -> np.ndarray:
    """uint8 probability codes -> float32 ``(v - 1) / 254``; :data:`MISSING` pixels (0)
    become ``missing`` (e.g. 1.0 where an absent tile should count as membrane)."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise ValueError(f"8-bit probability codes must be uint8, got {codes.dtype}")
    prob = (codes.astype(np.float32) - 1.0) / 254.0
    prob[codes == MISSING] = missing
    return prob


# --- class codes ---------------------------------------------------------------------------


def label_codes(n_classes: int) -> np.ndarray:
    """The label-PNG code of each class 1..K (index k - 1): ``round(255 (k - 1) / (K - 1))``."""
    if n_classes < 2 or n_classes > 256:
        raise ValueError(f"PNG label encoding needs 2..256 classes, got {n_classes}")
    return _round(255.0 * np.arange(n_classes) / (n_classes - 1)).astype(np.uint8)


def encode_label_png(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Classes 1..K -> uint8 label-PNG codes (see :func:`label_codes`).

    0 (unknown) has no code; saturated sampling guarantees patches never hold it.
    """
    codes = label_codes(n_classes)
    if classes.size and (classes.min() < 1 or classes.max() > n_classes):
        raise ValueError(f"label patch values must lie in 1..{n_classes} (no unknown 0), got "
                         f"{int(classes.min())}..{int(classes.max())}")
    return codes[classes.astype(np.int64) - 1]


def decode_label_png(png: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse of :func:`encode_label_png` (int64 classes); a value that is no code raises."""
    codes = label_codes(n_classes)
    lut = np.full(256, -1, dtype=np.int64)
    lut[codes] = np.arange(1, n_classes + 1)
    out = lut[png]
    if (out < 0).any():
        bad = np.unique(png[out < 0])[:10]
        raise ValueError(f"label patch values {bad.tolist()} are not codes of {n_classes} classes "
                         f"({codes.tolist()}); is n_classes right?")
    return out


def infer_n_classes(values: np.ndarray) -> int:
    """Smallest K whose label-PNG codes include every value seen (folders without manifest)."""
    seen = set(np.unique(values).tolist())
    for k in range(2, 257):
        if seen <= set(label_codes(k).tolist()):
            return k
    raise ValueError(f"label patch values {sorted(seen)[:10]} match no class encoding")


def classes_to_tile_u8(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Classes 1..K -> uint8 class-tile codes ``round(255 k / K)`` (never 0 = missing)."""
    if n_classes < 1 or n_classes > 255:
        raise ValueError(f"class tiles hold 1..255 classes, got {n_classes}")
    codes = _round(255.0 * np.arange(1, n_classes + 1) / n_classes).astype(np.uint8)
    return codes[np.asarray(classes, dtype=np.int64) - 1]


# --- ids as colours ------------------------------------------------------------------------


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Ids -> uint8 RGB (..., 3) with ``id = R * 65536 + G * 256 + B``; ids >= 2**24 raise."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= RGB_ID_LIMIT):
        raise ValueError(f"RGB-coded tiles hold ids 0..{RGB_ID_LIMIT - 1}, got "
                         f"{int(ids.min())}..{int(ids.max())}; relabel the ids or write "
                         "zarr/TIFF instead")
    v = ids.astype(np.uint32)
    return np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], axis=-1).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """RGB-coded labels (..., 3) -> uint32 ids ``R * 65536 + G * 256 + B``."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def mix64(values: np.ndarray) -> np.ndarray:
    """A fixed 64-bit hash (splitmix64 finaliser) of unsigned integers, elementwise."""
    k = np.asarray(values, dtype=np.uint64).copy()
    k ^= k >> np.uint64(30)
    k *= np.uint64(0xBF58476D1CE4E5B9)
    k ^= k >> np.uint64(27)
    k *= np.uint64(0x94D049BB133111EB)
    k ^= k >> np.uint64(31)
    return k


def palette_rgb(ids: np.ndarray) -> np.ndarray:
    """Display colours (..., 3) uint8 from a hash of each id, channels in 64..255 so no
    object looks black; 0 stays black. The same id gets the same colour everywhere."""
    ids = np.asarray(ids)
    h = mix64(ids.astype(np.uint64))
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(255) for s in (40, 48, 56)], axis=-1)
    rgb = (64 + rgb.astype(np.uint16) * 3 // 4).astype(np.uint8)
    rgb[ids == 0] = 0
    return rgb


def class_preview(classes: np.ndarray) -> np.ndarray | None:
    """A viewable uint8 picture of a small class map (0 unknown, 1, 2): ``255 k // 2``,
    i.e. 0 / 127 / 255, membrane white; None when the map holds other values (it is
    already viewable, or not a class map)."""
    top = int(classes.max(initial=0))
    if classes.min(initial=0) < 0 or not 1 <= top <= 2:
        return None
    return (classes.astype(np.uint16) * 255 // 2).astype(np.uint8)


# --- PNG files -----------------------------------------------------------------------------


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Encode a (y, x) or RGB (y, x, 3) 8/16-bit image as PNG and write it atomically."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"cannot encode {image.dtype} {image.shape} as PNG for {path}")
    write_bytes_atomic(path, buf.tobytes(), sync_dir=False)  # see membrane_py.atomic


def read_png(path: str | Path) -> np.ndarray | None:
    """A PNG (or another format OpenCV decodes, e.g. JPEG, BMP) as (y, x) or RGB (y, x, 3)
    in its stored dtype, alpha dropped; None when the file is missing or undecodable."""
    path = Path(path)
    if not path.is_file():
        return None
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img
