"""Membrane-constrained flood fill: the cell around a click, numpy in and out.

The fill is face-connected (4-neighbours in 2D, 6 in 3D), so a one-pixel diagonal gap in a
membrane does not let it leak into the neighbouring cell.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def fill_region(prob: np.ndarray, seed: tuple[int, ...], threshold: float = 0.5) -> np.ndarray:
    """The cell around a click: the face-connected non-membrane region holding ``seed``.

    This is the paint-bucket of a proofreading tool: it selects every pixel reachable from
    the seed without crossing a pixel at or above ``threshold``. Connectivity is by faces
    (4 neighbours in 2D, 6 in 3D) so a one-pixel membrane drawn diagonally still closes.

    Parameters
    ----------
    prob : ndarray (y, x) or (z, y, x)
        Membrane probability in [0, 1], membrane bright.
    seed : tuple of int
        Index into ``prob``, one entry per axis, e.g. (y, x) or (z, y, x).
    threshold : float
        Pixels with ``prob >= threshold`` are walls.

    Returns
    -------
    mask : ndarray of bool, the shape of ``prob``

    Raises
    ------
    ValueError
        When the seed lies outside the map or on a membrane (the fill would be empty).
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
