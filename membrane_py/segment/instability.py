"""Where a segmentation hangs on the threshold: pixels that decide merges and splits.

Entropy marks every pixel whose membrane probability is near 0.5, and most of those lie on
the blurred edges of membranes the network found well: how thick a membrane is drawn does
not change which cells are joined. The errors that instance scores such as V_rand count are
topological: a faint stretch of membrane lets two cells join, a dark organelle cuts a cell
in two. This map marks those places: the cell interiors at a strict and at a lenient
threshold are compared, and a pixel is unstable when its membrane decision lies between the
two thresholds and it sits on the ridge between two interiors of the strict cut that the
lenient cut joins (or in an interior that only one of the cuts has).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def instability(membrane: np.ndarray, low: float = 0.3, high: float = 0.7,
                min_area: int = 16) -> np.ndarray:
    """(y, x) float32 map, 1 where the segment topology depends on the threshold, else 0.

    ``membrane`` is a (y, x) membrane probability in [0, 1]. Cell interiors are the
    4-connected components of ``membrane < low`` (the strict cut: more membrane, more
    segments; components under ``min_area`` px are ignored as specks) and of ``membrane <
    high`` (the lenient cut). A pixel with ``low <= membrane < high`` is unstable when

    - its lenient component holds two or more strict components and the pixel lies on the
      ridge between them (its 3x3 neighbourhood is nearest to different strict
      components): calling it interior joins cells, membrane keeps them apart; or
    - its lenient component holds no strict component: a segment that only one cut has.

    Pixels surely membrane or surely interior are 0, so a map of a confident network, or of
    a section whose every boundary is clear, is all zero.
    """
    if membrane.ndim != 2:
        raise ValueError(f"expected a (y, x) membrane map, got shape {membrane.shape}")
    if not 0.0 < low < high < 1.0:
        raise ValueError(f"need 0 < low < high < 1, got low {low}, high {high}")
    strict, _ = ndi.label(membrane < low)
    areas = np.bincount(strict.ravel())
    areas[0] = 0
    strict[areas[strict] < min_area] = 0
    inside = strict > 0
    lenient, n_lenient = ndi.label(membrane < high)
    # strict components per lenient component: a strict interior lies inside one lenient
    owner = np.zeros(len(areas), lenient.dtype)
    owner[strict[inside]] = lenient[inside]
    held = np.bincount(owner[areas >= min_area], minlength=n_lenient + 1)
    band = (membrane >= low) & (membrane < high)
    unstable = band & (held[lenient] == 0) & (lenient > 0)
    if (held >= 2).any():
        iy, ix = ndi.distance_transform_edt(~inside, return_distances=False,
                                            return_indices=True)
        nearest = strict[iy, ix]
        ridge = ndi.maximum_filter(nearest, size=3) != ndi.minimum_filter(nearest, size=3)
        unstable |= band & ridge & (held[lenient] >= 2)
    return unstable.astype(np.float32)
