"""Membrane-constrained fill: from a seed, the connected region below a membrane threshold.

The fill is face-connected (4-neighbours in 2D, 6 in 3D), so a one-pixel diagonal gap in a
membrane does not let it leak into the neighbouring cell. It is bounded by a box around the
seed; when it reaches that box's border the region may continue beyond it, which the result
says (``touches_border``) so a caller can warn or retry with a larger box. The region is
painted as one new segment with the rules of :mod:`membrane_py.edit.paint`.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from membrane_py.codes import palette_rgb
from membrane_py.edit.paint import (
    SegmentMap,
    open_target_layer,
    open_vast_and_source,
    vast_address,
    write_region,
)
from membrane_py.events import (
    CancelToken,
    Event,
    ProgressCallback,
    check_cancel,
    report,
    warn,
)
from membrane_py.geometry import Box, size_at_mip
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.predict.regions import cube_around
from membrane_py.segment.fill import fill_region
from membrane_py.segment.instances import to_probability
from membrane_py.vastapi.address import DEFAULT_VAST
from membrane_py.vastapi.client import VastClient


def touches_border(mask: np.ndarray, box: Box, full: Box) -> bool:
    """Whether the region reaches a side of ``box`` that is not the volume's own edge."""
    sides = []
    for axis, (lo, hi, flo, fhi) in enumerate(((box.z0, box.z1, full.z0, full.z1),
                                               (box.y0, box.y1, full.y0, full.y1),
                                               (box.x0, box.x1, full.x0, full.x1))):
        if mask.shape[axis] == 1:
            continue  # a single section: z is not a direction the fill can go
        if lo > flo:
            sides.append(np.take(mask, 0, axis=axis))
        if hi < fhi:
            sides.append(np.take(mask, -1, axis=axis))
    return any(s.any() for s in sides)


@dataclass
class FillJob(JobSpec):
    """Fill from ``seed`` (mip-0 x, y, z; None = the VAST view centre) in one section or,
    with ``three_d``, in 3D, within a box ``max_size`` mip-0 px wide and ``max_depth``
    sections deep around the seed, at ``mip``. ``source`` as for
    :class:`~membrane_py.edit.paint.PaintJob`."""

    kind: ClassVar[str] = "fill"

    source: str
    source_layer: int = 0
    vast: str = DEFAULT_VAST
    seed: list[int] | None = None
    threshold: float = 0.5
    three_d: bool = False
    max_size: int = 1024
    max_depth: int = 32
    mip: int = 0
    invert: bool = False
    name: str = ""  # segment name; default "fill at x,y,z"
    layer: int | None = None  # None = the layer called layer_name, made on first use
    layer_name: str = "membrane-py fills"
    overwrite: bool = False
    save: bool = True
    save_path: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")
        if self.max_size < 1 or self.max_depth < 1 or self.mip < 0:
            raise ValueError("max_size and max_depth must be >= 1 and mip >= 0")
        if self.seed is not None and len(self.seed) != 3:
            raise ValueError(f"seed is [x, y, z] at mip 0, got {self.seed}")
        vast_address(self.vast, self.source)


@dataclass
class FillResult(Result):
    """The segment painted and where; ``touches_border``: the region may continue."""

    layer: int
    segment: int  # the VAST segment id (0 when nothing could be written)
    seed: tuple[int, int, int]
    box: Box  # at the job's mip
    voxels: int  # region size at the job's mip
    voxels_written: int  # mip-0 voxels painted
    touches_border: bool

    def summary(self) -> str:
        return (f"filled {self.voxels} voxels from {list(self.seed)} as segment {self.segment} "
                f"of layer {self.layer}" + ("; it reached the box border" if self.touches_border
                                             else ""))


def run_fill(job: FillJob, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None, client: VastClient | None = None) -> FillResult:
    """Fill from the seed in the probability source and paint the region as one segment."""
    with ExitStack() as stack:
        client, info, source = open_vast_and_source(stack, job.vast, job.source,
                                                    job.source_layer, client)
        seed = tuple(int(v) for v in (job.seed or client.get_view_coordinates()))
        z, y, x = info.data_size
        if not (0 <= seed[0] < x and 0 <= seed[1] < y and 0 <= seed[2] < z):
            raise ValueError(f"seed {','.join(map(str, seed))} (x, y, z at mip 0) lies outside "
                             f"the volume, which spans {info.extent()}; give --seed inside it")
        full = Box.full(size_at_mip(info.data_size, job.mip))
        cube = cube_around(seed, job.max_size, job.max_depth if job.three_d else 1,
                           info.data_size)
        box = cube.to_mip(job.mip).intersect(full)
        prob = to_probability(source.read(box, job.mip), job.invert)
        local = (seed[2] - box.z0, (seed[1] >> job.mip) - box.y0, (seed[0] >> job.mip) - box.x0)
        mask = fill_region(prob, local, job.threshold)
        leaks = touches_border(mask, box, full)
        if leaks:
            warn(progress, f"the fill from {list(seed)} reached the border of its box "
                 f"{list(box.to_vast())}; the region may continue: raise max_size/max_depth "
                 "or lower the threshold", "fill")
        layer = open_target_layer(client, job.layer, job.layer_name, reuse=True)
        name = job.name or f"fill at {seed[0]},{seed[1]},{seed[2]}"
        segments = SegmentMap(client, None, lambda _: name)
        check_cancel(cancel)
        written, _ = write_region(client, box, job.mip, mask.astype(np.uint32), segments,
                                  job.overwrite)
        segment = segments.mapping.get(1, 0)
        if segment:  # a colour of its own, not that of every other fill's source id 1
            client.set_segment_color_rgb(segment, tuple(int(v) for v in palette_rgb(segment)))
        if job.save:
            client.save_layer(layer, job.save_path)
    report(progress, Event.progress("fill", 1, 1, f"segment {segment}"))
    return FillResult(layer, segment, seed, box, int(np.count_nonzero(mask)), written, leaks)
