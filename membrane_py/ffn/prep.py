"""The ``ffn-prep`` job: training coordinates from a ground-truth label volume.

FFN training samples FOV centres so that every kind of place is seen equally often. Each
voxel is put in a *partition* by its local object mass: the fraction of the
``(2r+1)^3`` box around it (``radius`` r per axis) that belongs to the voxel's own object.
Partition 0 is background (label 0, or objects smaller than ``min_size``, removed as dust);
an object voxel whose fraction lies below ``thresholds[i]`` (first match) gets partition
i + 1, above all thresholds ``len(thresholds) + 1``. Voxels within ``margin`` of the box
border (where a training patch would not fit) are excluded. Up to ``max_per_partition``
voxels of each partition are kept at random; training then draws a partition uniformly and
a voxel of it, which balances the classes as the reference's oversampling does without
writing millions of repeated records.

The output ``.npz`` holds ``coords`` (N, 3) int32 (z, y, x inside the box), ``partition``
(N,) uint8, ``counts`` (voxels per partition before the cap) and the job as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy import ndimage

from membrane_py.atomic import atomic_path
from membrane_py.edit.instances import decode_ids, region_box
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.geometry import Box
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.vastapi.address import parse_vast_address
from membrane_py.volumes.open import open_source

THRESHOLDS = [0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
EXCLUDED = 255


def clear_dust(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with objects smaller than ``min_size`` voxels set to 0."""
    ids, counts = np.unique(labels, return_counts=True)
    small = ids[(counts < min_size) & (ids != 0)]
    return np.where(np.isin(labels, small), 0, labels) if small.size else labels


def partitions(labels: np.ndarray, radius: tuple[int, int, int], thresholds: list[float],
               min_size: int = 0, cancel: CancelToken | None = None) -> np.ndarray:
    """uint8 partition of each voxel (see the module docstring); 255 within ``radius`` of
    the border, where the box around a voxel would leave the volume."""
    labels = clear_dust(np.maximum(labels, 0), min_size)
    ids, compact = np.unique(labels, return_inverse=True)  # ids 1..K, whatever their values
    labels = compact.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
    out = np.zeros(labels.shape, np.uint8)
    size = tuple(2 * r + 1 for r in radius)
    objs = ndimage.find_objects(labels)
    # one box filter per object, inside its bounding box grown by the radius
    for i, sl in enumerate(objs, 1):
        if sl is None:
            continue
        check_cancel(cancel)
        grown = tuple(slice(max(s.start - r, 0), min(s.stop + r, n))
                      for s, r, n in zip(sl, radius, labels.shape, strict=True))
        mine = labels[grown] == i
        frac = ndimage.uniform_filter(mine.astype(np.float32), size, mode="constant")
        part = (np.searchsorted(np.asarray(thresholds), frac[mine], side="right") + 1)
        out[grown][mine] = part.astype(np.uint8)
    inner = tuple(slice(r, n - r) for r, n in zip(radius, labels.shape, strict=True))
    border = np.full(labels.shape, True)
    border[inner] = False
    out[border] = EXCLUDED
    return out


def sample_coordinates(parts: np.ndarray, margin: tuple[int, int, int], max_per_partition: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Up to ``max_per_partition`` random (z, y, x) of each partition, ``margin`` away from
    the border; returns coords, their partitions and the full count per partition."""
    inner = tuple(slice(m, n - m) for m, n in zip(margin, parts.shape, strict=True))
    if any(s.start >= s.stop for s in inner):
        raise ValueError(f"the label volume {list(parts.shape)} (z, y, x) is not larger than "
                         f"twice the margin {list(margin)}: use a larger volume or box")
    view = parts[inner]
    coords, which, counts = [], [], {}
    for p in np.unique(view):
        if p == EXCLUDED:
            continue
        flat = np.flatnonzero(view == p)
        counts[int(p)] = int(flat.size)
        pick = rng.choice(flat, min(flat.size, max_per_partition), replace=False)
        zyx = np.stack(np.unravel_index(pick, view.shape), 1) + np.array(margin)
        coords.append(zyx.astype(np.int32))
        which.append(np.full(len(pick), p, np.uint8))
    if not coords:
        raise ValueError("no training coordinates: the labels hold no usable voxel inside "
                         "the margin")
    return np.concatenate(coords), np.concatenate(which), counts


@dataclass
class FFNPrepJob(JobSpec):
    """Label volume (file or VAST segmentation layer) -> FFN training coordinates (.npz).

    ``radius``, ``margin`` are (z, y, x); the reference uses fov//2 + deltas = 24 for the
    33^3 / 8 model, and ``min_size`` 10000."""

    kind: ClassVar[str] = "ffn-prep"

    labels: str
    output: str
    labels_layer: int | None = None
    box: list[int] | None = None
    mip: int = 0
    radius: tuple[int, int, int] = (24, 24, 24)
    margin: tuple[int, int, int] = (24, 24, 24)
    thresholds: list[float] = field(default_factory=lambda: list(THRESHOLDS))
    min_size: int = 10000
    max_per_partition: int = 100000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.box is not None:
            Box.from_vast_list(self.box)
        if min(self.radius) < 0 or min(self.margin) < 0 or self.min_size < 0:
            raise ValueError("radius, margin and min_size must be >= 0")
        if not self.thresholds or sorted(self.thresholds) != list(self.thresholds) or \
                not all(0 < t < 1 for t in self.thresholds) or len(self.thresholds) > 250:
            raise ValueError(f"thresholds must be increasing fractions in (0, 1), got "
                             f"{self.thresholds}")
        if self.max_per_partition < 1:
            raise ValueError("max_per_partition must be >= 1")
        if not str(self.output).endswith(".npz"):
            raise ValueError(f"output must be a .npz file, got {self.output!r}")


@dataclass
class FFNPrepResult(Result):
    path: Path
    box: Box
    coordinates: int
    counts: dict[int, int]

    def summary(self) -> str:
        return (f"{self.coordinates} coordinates in {len(self.counts)} partitions "
                f"-> {self.path}")


def run_ffn_prep(job: FFNPrepJob, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> FFNPrepResult:
    """Read the labels over the box, partition them, sample coordinates, write the .npz."""
    layer = job.labels_layer if parse_vast_address(job.labels) else None
    with open_source(job.labels, layer, labels=True) as source:
        box = region_box(job.box, source.shape, job.mip)
        labels = decode_ids(source.read(box, job.mip))
    report(progress, Event.progress("ffn-prep", 0, 2, "partitions"))
    parts = partitions(labels, job.radius, job.thresholds, job.min_size, cancel)
    report(progress, Event.progress("ffn-prep", 1, 2, "coordinates"))
    coords, which, counts = sample_coordinates(parts, job.margin, job.max_per_partition,
                                               np.random.default_rng(job.seed))
    path = Path(job.output)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, coords=coords, partition=which,
                            counts=np.array([[k, v] for k, v in sorted(counts.items())]),
                            box_zyx=np.array([box.z0, box.z1, box.y0, box.y1, box.x0, box.x1]),
                            job=np.array(json.dumps(job.to_dict())))
    report(progress, Event.progress("ffn-prep", 2, 2, f"{len(coords)} coordinates"))
    report(progress, Event.artifact(path, "ffn-prep", "FFN training coordinates"))
    return FFNPrepResult(path, box, len(coords), counts)
