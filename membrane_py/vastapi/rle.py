"""Run-length coding of uint16 segmentation voxels as VAST sends them: (value, count) pairs.

Runs follow x-fastest order and may wrap across rows and sections; a count is 1..65535,
so longer runs are split.
"""

from __future__ import annotations

import numpy as np

MAX_RUN = 0xFFFF


def rle_encode(labels: np.ndarray) -> np.ndarray:
    """Encode any-shaped uint16 array (C order) into a flat uint16 array of (value, count) pairs."""
    flat = np.ascontiguousarray(labels, dtype=np.uint16).ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.uint16)
    starts = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    values = flat[starts]
    pieces = -(-lengths // MAX_RUN)  # runs over 65535 become several pairs
    values = np.repeat(values, pieces)
    counts = np.full(values.size, MAX_RUN, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    counts[last] = lengths - (pieces - 1) * MAX_RUN
    out = np.empty(values.size * 2, dtype=np.uint16)
    out[0::2] = values
    out[1::2] = counts
    return out


def rle_decode(pairs: np.ndarray | bytes, n_voxels: int) -> np.ndarray:
    """Decode (value, count) pairs into a flat uint16 array of exactly ``n_voxels`` voxels.

    Raises ValueError on an odd word count, a zero count, or a total that does not match, so
    corrupt data never becomes a silently wrong volume.
    """
    words = np.frombuffer(pairs, dtype="<u2") if isinstance(pairs, bytes | bytearray | memoryview) \
        else np.asarray(pairs, dtype=np.uint16).ravel()
    if words.size % 2:
        raise ValueError(f"RLE stream has an odd number of uint16 words ({words.size})")
    values, counts = words[0::2], words[1::2].astype(np.int64)
    if counts.size and counts.min() == 0:
        raise ValueError("RLE stream contains a run of length 0")
    total = int(counts.sum())
    if total != n_voxels:
        raise ValueError(f"RLE stream covers {total} voxels, expected {n_voxels}")
    return np.repeat(values, counts).astype(np.uint16, copy=False)
