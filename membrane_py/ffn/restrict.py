"""Where flood filling may not place a FOV: regions of bad alignment ("shift mask").

Between consecutive sections of a stack the residual misalignment can be measured as a
shift field (e.g. by patch cross-correlation). Where it is large, an FFN easily merges
neurons across the section break, so the reference keeps the FOV away from it: no FOV may
be centred where any voxel of a window around the centre has a shift of at least
``threshold`` pixels. The result is a "no FOV centre and no seed" mask, the same role as
:class:`~membrane_py.ffn.canvas.FloodFiller`'s ``mask``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def shift_restriction(shift: np.ndarray, threshold: float = 4.0,
                      radius: tuple[int, int, int] = (16, 16, 16)) -> np.ndarray:
    """True where no FOV may be centred: some voxel within ``radius`` (z, y, x) has a shift
    magnitude >= ``threshold``. ``shift``: (z, y, x) magnitudes, or (2, z, y, x) y and x
    shifts (their largest absolute value counts, as in the reference)."""
    shift = np.asarray(shift)
    if shift.ndim == 4:
        shift = np.abs(shift).max(axis=0)
    if shift.ndim != 3:
        raise ValueError(f"a shift mask is (z, y, x) or (2, z, y, x), got shape {shift.shape}")
    if len(radius) != 3 or min(radius) < 0:
        raise ValueError(f"the shift-mask radius is three values >= 0 (z, y, x), got {radius}")
    bad = np.abs(shift) >= threshold
    size = tuple(2 * int(r) + 1 for r in radius)
    return ndimage.maximum_filter(bad, size=size, mode="constant", cval=False)


def shift_block(shift: np.ndarray, box_lo: tuple[int, int, int],
                box_hi: tuple[int, int, int], threshold: float = 4.0,
                radius: tuple[int, int, int] = (16, 16, 16), scale: int = 1) -> np.ndarray:
    """The no-FOV-centre mask over the box ``box_lo``..``box_hi`` (z, y, x, end exclusive)
    of a volume whose shift field ``shift`` ((z, y, x) or (2, z, y, x)) is stored at
    1/``scale`` resolution in y and x; shifts outside the box but within ``radius`` count."""
    if scale < 1:
        raise ValueError(f"the shift-mask scale must be >= 1, got {scale}")
    shift = np.asarray(shift)
    if shift.ndim == 4:
        shift = np.abs(shift).max(axis=0)
    full = (shift.shape[0], shift.shape[1] * scale, shift.shape[2] * scale)
    if any(h > f for h, f in zip(box_hi, full, strict=True)):
        raise ValueError(f"the shift mask {list(shift.shape)} (z, y, x; y and x at 1/{scale}) "
                         f"does not cover the image box up to {list(box_hi)}")
    lo = [max(a - r, 0) for a, r in zip(box_lo, radius, strict=True)]
    hi = [min(b + r, f) for b, r, f in zip(box_hi, radius, full, strict=True)]
    ys, xs = np.arange(lo[1], hi[1]) // scale, np.arange(lo[2], hi[2]) // scale
    block = shift_restriction(shift[lo[0]:hi[0]][:, ys][:, :, xs], threshold, radius)
    return block[tuple(slice(a - l0, b - l0)
                       for a, b, l0 in zip(box_lo, box_hi, lo, strict=True))]
