"""Predictions as editable paint: masks or instance ids written into a VAST segmentation layer.

This is mEMbrain's "Convert VSVI to VSSEG" (membrain.md 2.1) done as intended: for each region
(the volume, a box, or cubes around the current view, skeleton anchors or nodes, as in
:class:`~membrane_py.predict.job.RegionSpec`) the prediction is read at the
chosen mip, turned into ids (a thresholded class mask, 2D or 3D instances, or the ids of a
label volume) and painted into a segmentation layer, which VAST then lets the user correct.

Rules that keep the user's work safe and the layer consistent:

* Read and write windows are the same box. Regions are mip-0 boxes scaled to the
  prediction mip (start floored, end rounded up, so they cover the same area); painting
  happens at mip 0, each mip-m pixel covering its 2^m x 2^m block, so existing paint
  is protected voxel by voxel at any mip.
* The existing segmentation is read first; only voxels that are 0 are written unless
  ``overwrite`` is set (even then our 0s never erase anything).
* Every source id gets its own new VAST segment (named, coloured like the palette of
  :mod:`instance_io`, grouped under one parent segment per run), so painted ids never
  collide with segments the user already has. Source ids above 65535 (VAST carries uint16)
  therefore are remapped; a warning names each region where that happened. Running out of
  the 65535 segments VAST can hold is an error, never a silent truncation.
* The layer is saved (``SAVELAYER``) at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from membrane_py.codes import palette_rgb
from membrane_py.edit.instances import check_shapes, decode_ids
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report, warn
from membrane_py.geometry import Box, size_at_mip
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.predict.job import RegionSpec
from membrane_py.predict.regions import region_boxes
from membrane_py.segment.affinity import (
    AgglomerationKnobs,
    boundary_affinities,
    segment_affinities,
)
from membrane_py.segment.agglomerate import AgglomerationConfig, agglomerate
from membrane_py.segment.instances import InstanceConfig, segment_stack, to_probability
from membrane_py.vastapi.address import DEFAULT_VAST, parse_vast_address
from membrane_py.vastapi.client import VastClient, VastInfo
from membrane_py.volumes.base import VolumeSource
from membrane_py.volumes.open import open_source
from membrane_py.volumes.placed import PlacedVolume

SEG_MAX_ID = 0xFFFF
SEGMENTATION_LAYER = 2  # ADDNEWLAYER type: segmentation with XY mipmapping
PAINT_MODES = ("mask", "instances2d", "instances3d", "agglomerate", "labels")
_NAMES = {"mask": "{class_name}", "instances2d": "cell {id}", "instances3d": "neuron {id}",
          "agglomerate": "neuron {id}", "labels": "label {id}"}
COMPUTED = ("instances2d", "instances3d", "agglomerate")  # modes that number their own ids


@dataclass
class PaintJob(JobSpec):
    """What to paint, where, into which layer of the VAST at ``vast``.

    ``source``: a probability or label volume path, or a VAST address (the same VAST; its
    image layer ``source_layer`` is read). ``region``: as for prediction (mip-0 boxes or
    cubes around the view, skeleton anchors or nodes), processed at ``mip``. ``mode``
    ``agglomerate`` paints the hierarchical agglomeration of each region's membrane map
    (:func:`membrane_py.segment.segment_affinities` with ``affinity``, the merge threshold).
    """

    kind: ClassVar[str] = "paint"

    source: str
    source_layer: int = 0
    vast: str = DEFAULT_VAST
    mode: str = "instances2d"
    region: RegionSpec = field(default_factory=RegionSpec)
    mip: int = 0
    threshold: float = 0.5  # mask mode: probability >= threshold is painted
    class_name: str = "membrane"
    invert: bool = False
    layer: int | None = None  # target segmentation layer; None = a new one
    layer_name: str = "membrane-py predictions"
    overwrite: bool = False
    save: bool = True
    save_path: str = ""
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    agglomeration: AgglomerationConfig = field(default_factory=AgglomerationConfig)
    affinity: AgglomerationKnobs = field(default_factory=AgglomerationKnobs)

    def __post_init__(self) -> None:
        if self.mode not in PAINT_MODES:
            raise ValueError(f"mode must be one of {PAINT_MODES}, got {self.mode!r}")
        if self.mip < 0:
            raise ValueError(f"mip must be >= 0, got {self.mip}")
        vast_address(self.vast, self.source)


def vast_address(vast: str, source: str) -> tuple[str, int]:
    """The (host, port) to paint into; a VAST source must be that same VAST."""
    address = parse_vast_address(vast)
    if address is None:
        raise ValueError(f"vast must be a VAST address like {DEFAULT_VAST}, got {vast!r}")
    from_source = parse_vast_address(source)
    if from_source is not None and from_source != address:
        raise ValueError(f"the source {source!r} is another VAST than the one painted into "
                         f"({vast!r}); read and paint through the same VAST")
    return address


@dataclass
class PaintResult(Result):
    """The layer painted, the regions (at the job's mip), counts and the id mapping."""

    layer: int
    regions: list[Box]  # at the job's mip
    segments_created: int
    voxels_written: int  # mip-0 voxels painted
    voxels_kept: int  # mip-0 voxels we had ids for but left to the user's paint
    mapping: dict[int, int]  # source id -> VAST segment id

    def summary(self) -> str:
        return (f"painted {self.voxels_written} voxels in {len(self.regions)} region(s) of "
                f"layer {self.layer}; {self.segments_created} new segments; "
                f"{self.voxels_kept} voxels left to existing paint")


# --- the target layer and its segments ------------------------------------------------------


def open_vast_and_source(stack: ExitStack, vast: str, source: str, source_layer: int,
                         client: VastClient | None = None, labels: bool = False
                         ) -> tuple[VastClient, VastInfo, VolumeSource]:
    """The VAST to paint into (``client``, or a new connection closed with ``stack``), its
    info, and the job's source volume, which must cover VAST's volume."""
    if client is None:
        client = stack.enter_context(VastClient(*vast_address(vast, source)))
    info = client.get_info()
    volume = stack.enter_context(open_source(source, source_layer, labels=labels,
                                             client=client))
    check_shapes([volume], info.data_size)
    return client, info, volume


def open_target_layer(client: VastClient, layer: int | None, name: str,
                      reuse: bool = False) -> int:
    """Select the segmentation layer to paint into: ``layer``, else (with ``reuse``) the
    layer called ``name``, else a new one of that name after the last layer."""
    if layer is None and reuse:
        names = client.get_layer_names()
        layer = names.index(name) if name in names else None
    if layer is None:
        layer = client.add_new_layer(SEGMENTATION_LAYER, name,
                                     ref=client.get_number_of_layers() - 1)
    client.set_api_layers_enabled(True)
    client.set_selected_api_layer(layer)
    if client.get_selected_api_layers().segmentation != layer:
        names = client.get_layer_names()
        raise ValueError(f"VAST layer {layer} ({names[layer]!r}) is not a segmentation layer; "
                         "name a segmentation layer or leave the layer out to create one")
    return layer


class SegmentMap:
    """Source ids -> segments of the selected VAST segmentation layer, made on first use.

    With a ``folder`` name, new segments are children of one parent segment made for them,
    so a whole run can be hidden or removed at once in VAST's segment list; without one
    they are appended at the top level.
    """

    def __init__(self, client: VastClient, folder: str | None,
                 name_of: Callable[[int], str]) -> None:
        self.client = client
        self.folder_name = folder
        self.name_of = name_of
        self.folder: int | None = None
        self.mapping: dict[int, int] = {}

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """uint16 segment ids for source ids (> 0), creating the segments still missing."""
        wanted = np.unique(ids)
        missing = [int(i) for i in wanted if int(i) not in self.mapping]
        if missing:
            self._create(missing)
        keys = np.fromiter(self.mapping, np.int64, len(self.mapping))
        order = np.argsort(keys)
        values = np.fromiter(self.mapping.values(), np.int64, len(self.mapping))[order]
        return values[np.searchsorted(keys[order], ids)].astype(np.uint16)

    def _create(self, ids: list[int]) -> None:
        c = self.client
        make_folder = self.folder_name is not None and self.folder is None
        need = len(ids) + make_folder
        have = c.get_number_of_segments() - 1  # counts the background (the mock does)
        if have + need > SEG_MAX_ID:
            raise ValueError(f"the segmentation layer holds {have} segments; {need} more "
                             f"would exceed VAST's {SEG_MAX_ID}. Paint fewer regions, use a "
                             "larger min_size, or paint into a new layer")
        if make_folder:
            self.folder = c.add_segment(self.folder_name)
        colours = palette_rgb(np.asarray(ids, np.int64))
        for i, rgb in zip(ids, colours, strict=True):
            sid = c.add_segment(self.name_of(i), ref=self.folder or 0,
                                as_child=self.folder is not None)
            c.set_segment_color_rgb(sid, tuple(int(v) for v in rgb))
            self.mapping[i] = sid


def upsample(section: np.ndarray, factor: int) -> np.ndarray:
    """A (y, x) section at mip m -> mip 0: each pixel becomes a factor x factor block."""
    if factor == 1:
        return section
    return np.repeat(np.repeat(section, factor, axis=0), factor, axis=1)


def compose(existing: np.ndarray, new: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Bool mask of voxels to write: ours (> 0) where the layer is 0, or everywhere ours if
    ``overwrite``. Our 0s never erase existing paint."""
    writable = new > 0
    return writable if overwrite else writable & (existing == 0)


def write_region(client: VastClient, box: Box, mip: int, labels: np.ndarray, segments: SegmentMap,
                 overwrite: bool = False,
                 progress: ProgressCallback | None = None) -> tuple[int, int]:
    """Paint ``labels`` (source ids of ``box`` at ``mip``) section by section at mip 0.

    Returns (voxels written, voxels left to existing paint), both at mip 0.
    """
    if labels.shape != box.shape:
        raise ValueError(f"labels shaped {labels.shape} do not match box {box.shape}")
    top = int(labels.max(initial=0))
    if top > SEG_MAX_ID:
        warn(progress, f"region {list(box.to_vast())} (mip {mip}): source ids up to {top} exceed "
             "VAST's 16-bit range; they are painted as new segments numbered within 1..65535 "
             "(see the mapping)", "paint")
    f = 1 << mip
    written = kept = 0
    for iz, z in enumerate(range(box.z0, box.z1)):
        if not labels[iz].any():
            continue
        target = Box(z, z + 1, box.y0 * f, box.y1 * f, box.x0 * f, box.x1 * f)
        new = upsample(labels[iz], f)[None]
        existing = client.get_seg_image_rle(target, 0)
        writable = compose(existing, new, overwrite)
        kept += int(np.count_nonzero(new)) - int(np.count_nonzero(writable))
        if not writable.any():
            continue
        out = existing.copy()
        out[writable] = segments.lookup(new[writable])
        client.set_seg_image(target, out, 0)
        written += int(np.count_nonzero(writable))
    return written, kept


def paint_regions(client: VastClient, job: PaintJob, source: VolumeSource,
                  progress: ProgressCallback | None = None) -> list[Box]:
    """The job's region as boxes at its mip (duplicates dropped, empty ones skipped).

    Region "volume" of a source that holds one box (`membrane instances --box` output)
    is that box, so the ids paste back where they were computed."""
    shape = source.shape
    full = Box.full(size_at_mip(shape, job.mip))
    if job.region.mode == "volume" and isinstance(source, PlacedVolume):
        mip0 = [source.box_mip0]
    else:
        mip0 = region_boxes(job.region, shape, client, progress)
    boxes = [b.to_mip(job.mip).intersect(full) for b in mip0]
    return [b for b in dict.fromkeys(boxes) if not b.empty]


# --- the job --------------------------------------------------------------------------------


def region_ids(source: VolumeSource, box: Box, job: PaintJob) -> np.ndarray:
    """Source ids of one region: a class mask (id 1), 2D/3D instances, or label ids."""
    data = source.read(box, job.mip)
    if job.mode == "labels":
        return decode_ids(data)
    prob = to_probability(data, job.invert)
    if job.mode == "mask":
        return (prob >= job.threshold).astype(np.uint32)
    if job.mode == "agglomerate":
        return segment_affinities(boundary_affinities(prob), job.affinity)
    labels = segment_stack(prob, job.instances)
    return labels if job.mode == "instances2d" else agglomerate(labels, job.agglomeration)


def run_paint(job: PaintJob, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, client: VastClient | None = None) -> PaintResult:
    """Paint every region of the job into the target layer, then save the layer."""
    with ExitStack() as stack:
        client, info, source = open_vast_and_source(stack, job.vast, job.source,
                                                    job.source_layer, client,
                                                    labels=job.mode == "labels")
        regions = paint_regions(client, job, source, progress)
        layer = open_target_layer(client, job.layer, job.layer_name)
        segments = SegmentMap(client, f"membrane-py {job.mode}: {source.name}",
                              lambda i: _NAMES[job.mode].format(id=i, class_name=job.class_name))
        written = kept = 0
        offset = 0  # computed instances: ids unique over all regions of the job
        for k, box in enumerate(regions, 1):
            check_cancel(cancel)
            ids = region_ids(source, box, job)
            if job.mode in COMPUTED:
                top = int(ids.max(initial=0))
                ids = np.where(ids > 0, ids.astype(np.int64) + offset, 0)
                offset += top
            w, kp = write_region(client, box, job.mip, ids, segments, job.overwrite, progress)
            written, kept = written + w, kept + kp
            report(progress, Event.progress("paint", k, len(regions), f"{w} voxels"))
        if job.save:
            client.save_layer(layer, job.save_path)
    return PaintResult(layer, regions, len(segments.mapping) + (segments.folder is not None),
                       written, kept, dict(segments.mapping))
