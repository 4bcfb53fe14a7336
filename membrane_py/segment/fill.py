"""Membrane-constrained flood fill: the cell around a click, numpy in and out.

The fill is face-connected (4-neighbours in 2D, 6 in 3D), so a one-pixel diagonal gap in a
membrane does not let it leak into the neighbouring cell.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def fill_region(prob: np.ndarray, seed: tuple[int, ...], threshold: float = 0.5) -> np.ndarray:
    """Bool mask of the face-connected region of ``prob < threshold`` holding ``seed``.

    ``prob`` is a 2D (y, x) or 3D (z, y, x) membrane probability in [0, 1]; ``seed`` an index
    into it. A seed on a membrane is an error (the fill would be empty).
    """
    if len(seed) != prob.ndim or any(not 0 <= s < n for s, n in zip(seed, prob.shape,
                                                                        strict=True)):
        raise ValueError(f"seed {seed} lies outside the probability map {prob.shape}")
    value = float(prob[seed])
    if value >= threshold:
        raise ValueError(f"the seed lies on a membrane (probability {value:.2f} >= threshold "
                         f"{threshold}); click inside a cell or raise the threshold")
    labels, _ = ndi.label(prob < threshold)  # default structure: face connectivity
    return labels == labels[seed]
