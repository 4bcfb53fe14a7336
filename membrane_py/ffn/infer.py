"""The ``ffn-infer`` job: flood-fill a volume (or a box of it) with a trained FFN.

Reads the image (any volume form or a VAST image layer) over the box, normalises it with the
checkpoint's mean and standard deviation, places seeds (the peaks policy, or the points the
user gives), grows objects (:class:`~membrane_py.ffn.canvas.FloodFiller`) and writes uint32
ids as zarr, TIFF, npz or RGB tiles with a ``.vsvi`` (the writers of
:mod:`membrane_py.edit.instances`); with ``paint`` set, the objects are also painted into a
new segmentation layer of that VAST (ids become VAST segments within 1..65535, see
:mod:`membrane_py.edit.paint`). The checkpoint may be an FFN checkpoint or a TensorFlow one
(imported on the fly with ``model`` as its geometry).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from membrane_py.atomic import atomic_path
from membrane_py.edit.instances import COLORINGS, check_shapes, region_box, write_instances
from membrane_py.events import CancelToken, Event, ProgressCallback, report
from membrane_py.ffn.canvas import FloodFiller, FloodOptions, FloodStats
from membrane_py.ffn.checkpoint import load_ffn
from membrane_py.ffn.consensus import forward_reverse
from membrane_py.ffn.predictor import PRECISIONS, FFNPredictor
from membrane_py.ffn.restrict import shift_block
from membrane_py.ffn.seeds import peak_seeds
from membrane_py.ffn.subvolumes import segment_in_subvolumes
from membrane_py.geometry import Box
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.models.ffn import FFNConfig
from membrane_py.vastapi.address import parse_vast_address
from membrane_py.volumes.open import open_source, open_volume

#: objects grown side by side on a GPU by default (one FOV per call leaves it mostly idle)
GPU_CONCURRENCY = 8


@dataclass
class FFNInferJob(JobSpec):
    """Segment ``image`` with the FFN ``checkpoint`` into ``output`` (``.zarr``, ``.tif``,
    ``.npz`` or a tile folder). ``box``: inclusive mip-0 VAST order, None = everything.
    ``seeds``: mip-0 ``[x, y, z]`` points, None = peak seeds. ``mask``: a volume whose
    non-zero voxels get no FOV centre and no seed. ``concurrency``: objects grown side by
    side, their FOVs evaluated in one batch, with strict order's result (0: by device, 1
    on a CPU, where batches do not pay, :data:`GPU_CONCURRENCY` on a GPU).
    ``consensus``: grow the objects again from their seeds in reverse order and keep the
    split consensus of both runs (:mod:`membrane_py.ffn.consensus`; pieces below
    ``consensus_min_size`` dropped). ``shift_mask``: a volume of inter-section shift
    magnitudes (pixels; y and x at 1/``shift_mask_scale`` of the image's), no FOV centred
    where one within ``shift_mask_radius`` (z, y, x; None = the FOV's) reaches
    ``shift_mask_threshold`` (:mod:`membrane_py.ffn.restrict`)."""

    kind: ClassVar[str] = "ffn-infer"

    image: str
    checkpoint: str
    output: str
    image_layer: int = 0
    box: list[int] | None = None
    mip: int = 0
    seeds: list[list[int]] | None = None
    mask: str | None = None
    options: FloodOptions = field(default_factory=FloodOptions)
    model: FFNConfig | None = None  # geometry of a TensorFlow checkpoint (default: reference)
    image_mean: float | None = None  # None = the checkpoint's
    image_stddev: float | None = None
    concurrency: int = 0
    subvolume: tuple[int, int, int] | None = None  # core z, y, x; None = the box at once
    overlap: tuple[int, int, int] = (32, 32, 32)
    min_overlap: int = 100  # voxels two subvolumes' objects must share to be joined
    consensus: bool = False
    consensus_min_size: int = 1000
    shift_mask: str | None = None
    shift_mask_threshold: float = 4.0
    shift_mask_radius: tuple[int, int, int] | None = None
    shift_mask_scale: int = 1
    precision: str = "fp32"
    channels_last: bool = True
    device: str = "auto"
    colors: str = "ids"
    paint: str = ""  # a VAST address to paint the objects into ("" = do not paint)
    layer_name: str = "membrane-py ffn"

    def __post_init__(self) -> None:
        if self.box is not None:
            Box.from_vast_list(self.box)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.colors not in COLORINGS:
            raise ValueError(f"colors must be one of {COLORINGS}, got {self.colors!r}")
        if self.concurrency < 0 or self.mip < 0:
            raise ValueError("concurrency must be >= 0 (0 = by device) and mip >= 0")
        if self.subvolume is not None and (min(self.subvolume) < 1 or min(self.overlap) < 0):
            raise ValueError("subvolume sides must be >= 1 and overlaps >= 0")
        if self.subvolume is not None and self.seeds is not None:
            raise ValueError("seeds and subvolumes do not mix: give seeds for one box only")
        if self.seeds is not None and any(len(s) != 3 for s in self.seeds):
            raise ValueError(f"seeds are [x, y, z] points at mip 0, got {self.seeds}")
        if self.image_stddev is not None and self.image_stddev <= 0:
            raise ValueError(f"image_stddev must be > 0, got {self.image_stddev}")
        if self.consensus_min_size < 0 or self.shift_mask_scale < 1:
            raise ValueError("consensus_min_size must be >= 0 and shift_mask_scale >= 1")
        if self.shift_mask_radius is not None and (len(self.shift_mask_radius) != 3 or
                                                   min(self.shift_mask_radius) < 0):
            raise ValueError(f"shift_mask_radius is three values >= 0 (z, y, x), got "
                             f"{self.shift_mask_radius}")
        if self.paint and parse_vast_address(self.paint) is None:
            raise ValueError(f"paint must be a VAST address like vast://127.0.0.1:22081, got "
                             f"{self.paint!r}")


@dataclass
class FFNInferResult(Result):
    """What was written, the box (at the job's mip), objects, FOV steps and speed."""

    path: Path
    box: Box
    n_objects: int
    fov_steps: int
    seconds: float
    voxels_per_s: float
    rejected: dict[str, int]
    painted_layer: int | None = None

    def summary(self) -> str:
        return (f"{self.n_objects} objects from {self.fov_steps} FOV steps in "
                f"{self.seconds:.1f} s ({self.voxels_per_s:.0f} voxels/s) -> {self.path}")


def local_seeds(points: list[list[int]], box: Box, mip: int) -> np.ndarray:
    """mip-0 ``[x, y, z]`` points as (z, y, x) rows inside ``box`` (at ``mip``)."""
    rows = []
    for x, y, z in points:
        zyx = (z - box.z0, (y >> mip) - box.y0, (x >> mip) - box.x0)
        if not all(0 <= v < s for v, s in zip(zyx, box.shape, strict=True)):
            raise ValueError(f"seed {[x, y, z]} (x, y, z at mip 0) lies outside the volume "
                             f"or box {list(box.to_vast())}")
        rows.append(zyx)
    return np.array(rows, np.int64).reshape(-1, 3)


def write_npz(labels: np.ndarray, path: str | Path, origins: dict, attrs: dict) -> Path:
    """ids, seed origins (id, z, y, x rows) and the job as JSON in one compressed .npz."""
    path = Path(path)
    table = np.array([[k, *v] for k, v in sorted(origins.items())], np.int64).reshape(-1, 4)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, segmentation=labels, origins=table,
                            attrs=np.array(json.dumps(attrs)))
    return path


def paint_objects(vast: str, labels: np.ndarray, box: Box, mip: int, layer_name: str,
                  progress: ProgressCallback | None) -> int:
    """Paint ids into a new segmentation layer of ``vast`` (one VAST segment per id)."""
    from membrane_py.edit.paint import SegmentMap, open_target_layer, write_region
    from membrane_py.vastapi.client import VastClient

    with VastClient(*parse_vast_address(vast)) as client:
        layer = open_target_layer(client, None, layer_name)
        segments = SegmentMap(client, layer_name, lambda i: f"ffn object {i}")
        write_region(client, box, mip, labels, segments, progress=progress)
        client.save_layer(layer, "")
    return layer


def run_ffn_infer(job: FFNInferJob, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> FFNInferResult:
    """Read, seed, flood-fill, write (and paint)."""
    from membrane_py.train.device import pick_device

    t0 = time.perf_counter()
    ckpt = load_ffn(job.checkpoint, job.model)
    config = ckpt.config
    with ExitStack() as stack:
        source = stack.enter_context(open_source(
            job.image, job.image_layer if parse_vast_address(job.image) else None))
        shape, voxel_size = source.shape, source.voxel_size
        box = region_box(job.box, shape, job.mip)
        raw = source.read(box, job.mip)
    if raw.ndim != 3:
        raise ValueError(f"{job.image} is not a grayscale volume (read shape {raw.shape})")
    mask = None
    if job.mask:
        mask_volume = open_volume(job.mask, labels=True)
        check_shapes([mask_volume], shape)
        mask = mask_volume.read(box, job.mip) != 0
        if mask.ndim != 3:
            raise ValueError(f"mask {job.mask} must be a single-channel volume")
    blocked = mask
    if job.shift_mask:
        shift_volume = open_volume(job.shift_mask)
        shift = shift_volume.read(Box.full(shift_volume.shape))
        if shift.ndim != 3:
            raise ValueError(f"shift mask {job.shift_mask} must be a single-channel volume "
                             "of shift magnitudes")
        block = shift_block(shift, (box.z0, box.y0, box.x0), (box.z1, box.y1, box.x1),
                            job.shift_mask_threshold,
                            job.shift_mask_radius or config.radius, job.shift_mask_scale)
        blocked = block if mask is None else mask | block
    mean = ckpt.image_mean if job.image_mean is None else job.image_mean
    std = ckpt.image_stddev if job.image_stddev is None else job.image_stddev
    image = (raw.astype(np.float32) - np.float32(mean)) / np.float32(std)
    device = pick_device(job.device)
    predictor = FFNPredictor(ckpt.build_model(), device, job.precision, job.channels_last)
    concurrency = job.concurrency or (GPU_CONCURRENCY if device.type == "cuda" else 1)
    stats = FloodStats()
    origins: dict[int, tuple[int, int, int]] = {}

    def segment(sub: Box, seeds: np.ndarray | None = None) -> np.ndarray:
        sl = sub.slices()
        part_mask = None if mask is None else mask[sl]
        part_blocked = None if blocked is None else blocked[sl]

        def new_filler() -> FloodFiller:  # refuses an image smaller than the FOV
            return FloodFiller(image[sl], predictor, config.fov, config.deltas,
                               job.options, mask=part_blocked, concurrency=concurrency)

        def fill(filler: FloodFiller, seeds: np.ndarray, task: str) -> FloodFiller:
            filler.segment_all(seeds, progress, cancel, task)
            for k, v in vars(filler.stats).items():
                if k == "rejected":
                    for why, n in v.items():
                        stats.rejected[why] = stats.rejected.get(why, 0) + n
                else:
                    setattr(stats, k, getattr(stats, k) + v)
            return filler

        filler = new_filler()
        if seeds is None:
            seeds = peak_seeds(image[sl], part_mask)
        report(progress, Event.log(f"{len(seeds)} seeds in subvolume "
                                   f"{list(sub.to_vast())}", "ffn"))
        fill(filler, seeds, "ffn")
        labels = np.maximum(filler.segmentation, 0).astype(np.uint32)
        kept = filler.origins
        if job.consensus:
            labels, kept = forward_reverse(
                filler, lambda s: fill(new_filler(), s, "ffn reverse"), job.consensus_min_size)
        origins.update({k: tuple(int(a + b) for a, b in zip(v, (sub.z0, sub.y0, sub.x0),
                                                             strict=True))
                        for k, v in kept.items()})
        return labels

    if job.subvolume is None:
        labels = segment(Box.full(image.shape),
                         local_seeds(job.seeds, box, job.mip) if job.seeds is not None else None)
    else:
        labels = segment_in_subvolumes(image.shape, segment, job.subvolume, job.overlap,
                                       config.fov, job.min_overlap, progress, cancel)
        origins = {}  # ids were renumbered while reconciling
    attrs = {"job": job.to_dict(), "checkpoint_sha256": ckpt.weights_sha256 or None}
    if str(job.output).lower().endswith(".npz"):
        path = write_npz(labels, job.output, origins, attrs)
    else:
        path = write_instances(labels, job.output, volume_shape=shape, box=box, mip=job.mip,
                               voxel_size=voxel_size, name="ffn segmentation",
                               colors=job.colors, attrs=attrs)
    report(progress, Event.artifact(path, "ffn", "FFN segmentation"))
    layer = (paint_objects(job.paint, labels, box, job.mip, job.layer_name, progress)
             if job.paint else None)
    seconds = time.perf_counter() - t0
    return FFNInferResult(path, box, int(len(np.unique(labels)) - (labels == 0).any()),
                          stats.steps, seconds,
                          labels.size / max(seconds, 1e-9), dict(stats.rejected), layer)
