"""Instance segmentations in and out: colour coding, tiles/.vsvi, zarr, TIFF, and the
`membrane instances` job (probability volumes -> 2D or 3D instance ids -> files).

Two colour codings for RGB tiles (both in :mod:`membrane_py.codes`), chosen per job
(``colors``):

* ``ids`` (default): the label-import convention, id = R * 65536 + G * 256 + B. Lossless for
  ids below 2**24 and decoded again by every reader here (and by VAST's label import). Ids
  that follow each other get nearly the same colour, so it is poor for looking at.
* ``palette``: for display, each id gets a fixed pseudo-random colour (a hash of the id, so
  the same id always has the same colour in every run and tool, with each channel in
  64..255 so no object looks black); 0 stays black. Not decodable back to ids. The segments
  :mod:`membrane_py.edit.paint` creates in VAST get the same colours.

zarr (a one-level OME-Zarr, :mod:`membrane_py.volumes.omezarr`) and TIFF outputs hold uint32
ids of the processed box (multiscales metadata / description give the box, mip and job),
written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from membrane_py.atomic import atomic_dir, atomic_path
from membrane_py.codes import ids_to_rgb, palette_rgb, rgb_to_ids
from membrane_py.events import CancelToken, Event, ProgressCallback, report, warn
from membrane_py.geometry import Box, box_in_volume, size_at_mip, volume_extent
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.segment.affinity import (
    AgglomerationKnobs,
    boundary_affinities,
    segment_affinities,
)
from membrane_py.segment.agglomerate import AgglomerationConfig, agglomerate, watershed_3d
from membrane_py.segment.instances import (
    InstanceConfig,
    combine_predictions,
    segment_stack,
    to_probability,
)
from membrane_py.vastapi.address import parse_vast_address
from membrane_py.volumes.base import VolumeSource, check_voxel_size, output_voxel_size
from membrane_py.volumes.omezarr import open_multiscale
from membrane_py.volumes.open import open_source
from membrane_py.volumes.placed import placement_attrs
from membrane_py.volumes.tiles import TILE_SIZE, TileWriter

COLORINGS = ("ids", "palette")
MODES = ("auto", "2d", "3d", "watershed3d", "agglomerate", "affinities")
#: what ``auto`` picks for membrane maps, by the source's voxel size; measured with network
#: predictions in bench/neurons3d.py (FIB-25, isotropic) and bench/instances.py (snemi-mini's
#: shipped maps, serial sections); see docs/instances.md
ISOTROPIC_MODE = "agglomerate"
ANISOTROPIC_MODE = "agglomerate"  # with fragments seeded per section
ANISOTROPY = 2.0  # z step / xy pixel above which a stack counts as serial sections


def is_anisotropic(voxel_size: Sequence[float], mip: int = 0) -> bool:
    """True when the z step of a source of ``voxel_size`` (z, y, x; of mip 0) read at ``mip``
    exceeds :data:`ANISOTROPY` times its pixel. Sources that do not know their voxel size
    report (1, 1, 1) and count as isotropic."""
    z, y, x = (float(v) for v in voxel_size)
    return z > ANISOTROPY * max(y, x) * 2**mip


def auto_mode(voxel_size: Sequence[float], mip: int = 0) -> str:
    """The ``auto`` mode for a source (:data:`ANISOTROPIC_MODE` or :data:`ISOTROPIC_MODE`
    by :func:`is_anisotropic`)."""
    return ANISOTROPIC_MODE if is_anisotropic(voxel_size, mip) else ISOTROPIC_MODE


def decode_ids(data: np.ndarray) -> np.ndarray:
    """Label ids (int64) from a label volume read: grayscale ids, or RGB-coded (z, y, x, 3)."""
    if data.ndim == 4:
        return rgb_to_ids(data)
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"label volumes hold integer ids, got {data.dtype}")
    return data.astype(np.int64, copy=False)


# --- reading inputs ------------------------------------------------------------------------


def read_probability(sources: Sequence[VolumeSource], box: Box, mip: int,
                     weights: Sequence[float], invert: bool = False) -> np.ndarray:
    """Combined membrane probability (float32, [0, 1]) of ``box`` at ``mip`` from all sources."""
    return combine_predictions([to_probability(s.read(box, mip), invert) for s in sources],
                               weights)


def check_shapes(sources: Sequence[VolumeSource], shape: tuple[int, int, int]) -> None:
    """All sources must describe the same mip-0 volume."""
    for s in sources:
        if tuple(s.shape) != tuple(shape):
            raise ValueError(f"{s.name} spans {volume_extent(s.shape)} but the volume spans "
                             f"{volume_extent(shape)} (x, y, z, mip 0); every input must cover "
                             "the same volume")


def region_box(vast_box: Sequence[int] | None, shape: tuple[int, int, int], mip: int,
               clip: bool = False, progress: ProgressCallback | None = None) -> Box:
    """The processing box at ``mip`` from an inclusive mip-0 VAST-order box (None = all);
    a box outside the volume is an error, or with ``clip`` a warning
    (:func:`~membrane_py.geometry.box_in_volume`)."""
    full = Box.full(size_at_mip(shape, mip))
    if vast_box is None:
        return full
    box, clipped = box_in_volume(vast_box, shape, clip)
    if clipped:
        warn(progress, clipped, "instances")
    return box.to_mip(mip).intersect(full)


# --- writing -------------------------------------------------------------------------------


def write_zarr(labels: np.ndarray, path: str | Path, box: Box, mip: int,
               voxel_size: tuple[float, float, float], name: str, attrs: dict) -> Path:
    """uint32 ids of ``box`` (at ``mip``; ``voxel_size`` of mip 0) as a one-level OME-Zarr
    placed at the box (see :mod:`membrane_py.volumes.omezarr`), written atomically."""
    with atomic_dir(path) as tmp:
        (level0,) = open_multiscale(tmp, labels.shape, 1, labels.dtype, voxel_size, mip,
                                    tile=TILE_SIZE, name=name, labels=True,
                                    origin=(box.z0, box.y0, box.x0), metadata=attrs)
        level0[...] = labels
    return Path(path)


def write_tiff(labels: np.ndarray, path: str | Path, attrs: dict) -> Path:
    """uint32 ids as a multi-page TIFF (zlib), the job in the description, atomically."""
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack",
                         description=json.dumps(attrs), metadata=None)
    return path


def write_tiles(labels: np.ndarray, out_dir: str | Path, volume_shape: tuple[int, int, int],
                box: Box, mip: int, voxel_size: tuple[float, float, float], name: str,
                colors: str = "ids", tile: int = TILE_SIZE) -> Path:
    """RGB tiles of ``labels`` (covering ``box`` at ``mip``) plus pyramid and ``.vsvi``.

    Tiles the box touches are written whole; their parts outside the box are black.
    Returns the descriptor path (``<out_dir>/<out_dir name>.vsvi``).
    """
    if colors not in COLORINGS:
        raise ValueError(f"colors must be one of {COLORINGS}, got {colors!r}")
    writer = TileWriter(out_dir, volume_shape, mip=mip, tile=tile, channels=3)
    _, h, w = writer.shape
    aligned = Box(box.z0, box.z1, box.y0 // tile * tile, min(-(-box.y1 // tile) * tile, h),
                  box.x0 // tile * tile, min(-(-box.x1 // tile) * tile, w))
    code = ids_to_rgb if colors == "ids" else palette_rgb
    for z in range(box.z0, box.z1):
        section = np.zeros(aligned.shape[1:], labels.dtype)
        inner = box.relative_to(aligned)
        section[inner.y0:inner.y1, inner.x0:inner.x1] = labels[z - box.z0]
        writer.write_block(Box(z, z + 1, aligned.y0, aligned.y1, aligned.x0, aligned.x1),
                           code(section)[None])
    writer.build_pyramid(labels=True)
    out_dir = Path(out_dir)
    return writer.write_descriptor(out_dir / f"{out_dir.name}.vsvi", voxel_size, name)


def write_instances(labels: np.ndarray, output: str | Path, *, volume_shape, box: Box, mip: int,
                    voxel_size, name: str, colors: str = "ids", attrs: dict | None = None) -> Path:
    """Write ids by the output's form: ``.zarr`` directory, ``.tif``/``.tiff``, else a tile
    folder with a ``.vsvi``. Returns what to open (the descriptor for tiles).

    ``voxel_size`` is that of mip 0; zarr/TIFF record it with the box and mip they hold and
    the whole volume's size, so readers place them back (:mod:`membrane_py.volumes.placed`).
    """
    attrs = {**placement_attrs(volume_shape, box, mip), "voxel_size_zyx": list(voxel_size),
             **(attrs or {})}
    text = str(output).lower()
    if text.endswith(".zarr"):
        return write_zarr(labels, output, box, mip, voxel_size, name, attrs)
    if text.endswith((".tif", ".tiff")):
        return write_tiff(labels, output, attrs)
    return write_tiles(labels, output, volume_shape, box, mip, voxel_size, name, colors)


# --- the `membrane instances` job ----------------------------------------------------------


@dataclass
class InstanceJob(JobSpec):
    """Probability volume(s) -> instance ids -> zarr, TIFF or RGB tiles with a .vsvi.

    ``sources``: volume paths, or VAST addresses (``vast://host:port``) whose image layers
    are taken from ``layers`` in order. ``mode``: ``auto`` (the measured best for membrane
    maps by voxel size, :func:`auto_mode`; fragments seeded per section when
    :func:`is_anisotropic`), ``2d`` (per section), ``3d`` (2D segments
    linked across sections), ``watershed3d`` (seeds and flooding in 3D), ``agglomerate``
    (fragments of the membrane map merged hierarchically up to ``affinity.threshold``, see
    :mod:`membrane_py.segment.affinity`) or ``affinities`` (the same on predicted affinities:
    exactly three sources, the z, y and x affinity volumes in that order, e.g. the
    ``per_class`` output of an affinity network). ``box``: inclusive mip-0 VAST order
    (x0, x1, y0, y1, z0, z1), None = the whole volume; one reaching outside the volume is
    an error unless ``clip`` (then a warning). ``voxel_size`` (nm, x, y, z) is recorded in
    the outputs and picks the ``auto`` mode; default: the first source's.
    ``model_threshold``: the modes that cut membranes at ``instances.membrane_threshold``
    (2d, 3d, watershed3d) take the threshold the network recorded instead, when the first
    source is a ``membrane predict`` output of a checkpoint that chose one by whole-section
    validation (:func:`~membrane_py.predict.identity.recorded_threshold`); False (an
    explicit ``--threshold``) keeps ``instances.membrane_threshold``.
    """

    kind: ClassVar[str] = "instances"

    sources: list[str]
    output: str
    layers: list[int] = field(default_factory=lambda: [0])
    mode: str = "auto"
    box: list[int] | None = None
    mip: int = 0
    invert: bool = False
    colors: str = "ids"
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    agglomeration: AgglomerationConfig = field(default_factory=AgglomerationConfig)
    affinity: AgglomerationKnobs = field(default_factory=AgglomerationKnobs)
    min_size_3d: int = 500
    clip: bool = False
    voxel_size: list[float] | None = None
    model_threshold: bool = True

    def __post_init__(self) -> None:
        check_voxel_size(self.voxel_size)
        if self.box is not None:
            Box.from_vast_list(self.box)
        if not self.sources:
            raise ValueError("give at least one probability volume")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.colors not in COLORINGS:
            raise ValueError(f"colors must be one of {COLORINGS}, got {self.colors!r}")
        if self.mode == "affinities" and len(self.sources) != 3:
            raise ValueError(f"mode affinities takes three volumes (z, y, x affinities), got "
                             f"{len(self.sources)}")
        n_vast = sum(parse_vast_address(s) is not None for s in self.sources)
        if n_vast > len(self.layers):
            raise ValueError(f"{n_vast} VAST sources but only {len(self.layers)} layer "
                             "numbers: give one layer per VAST source")



@dataclass
class InstanceResult(Result):
    """What was written (the descriptor for tiles), the box processed (at the job's mip),
    the number of objects and the mode used (``auto`` resolved)."""

    path: Path
    box: Box
    n_objects: int
    mode: str = ""

    def summary(self) -> str:
        return (f"{self.n_objects} objects ({self.mode}) in box {list(self.box.to_vast())} -> "
                f"{self.path}")


def segment_volume(prob: np.ndarray, mode: str, cfg: InstanceConfig,
                   agglomeration: AgglomerationConfig, min_size_3d: int,
                   progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None,
                   affinity: AgglomerationKnobs | None = None) -> np.ndarray:
    """Instance ids (uint32) by ``mode`` (see MODES) of a (z, y, x) membrane probability
    volume, or for ``affinities`` of a (3, z, y, x) affinity volume."""
    if mode in ("agglomerate", "affinities"):
        affs = prob if mode == "affinities" else boundary_affinities(prob)
        return segment_affinities(affs, affinity, cancel)
    if mode == "watershed3d":
        return watershed_3d(prob, cfg, min_size_3d)
    labels = segment_stack(prob, cfg, progress, cancel)
    return labels if mode == "2d" else agglomerate(labels, agglomeration, progress, cancel)


#: modes that cut membranes at ``InstanceConfig.membrane_threshold``
THRESHOLD_MODES = ("2d", "3d", "watershed3d")


def membrane_threshold(job: InstanceJob, progress: ProgressCallback | None = None
                       ) -> InstanceConfig:
    """``job.instances`` with the membrane threshold to use (see ``InstanceJob``); a log
    event says which threshold and where it came from."""
    from membrane_py.predict.identity import recorded_threshold

    cfg = job.instances
    source = job.sources[0]
    found = recorded_threshold(source) if job.model_threshold and \
        parse_vast_address(source) is None else None
    if found is not None:
        cfg = replace(cfg, membrane_threshold=found[0])
        where = f"the network's, chosen in training, recorded in {found[1]}"
    elif job.model_threshold:
        where = "the default: the probabilities carry no threshold of their network"
    else:
        where = "given"
    report(progress, Event.log(f"membrane threshold {cfg.membrane_threshold:g} ({where})",
                               "instances"))
    return cfg


def run_instances(job: InstanceJob, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> InstanceResult:
    """Read and combine the sources over the box, segment, write the output."""
    layers = iter(job.layers)
    with ExitStack() as stack:
        sources = [stack.enter_context(open_source(
            spec, next(layers) if parse_vast_address(spec) else None)) for spec in job.sources]
        shape = sources[0].shape
        check_shapes(sources, shape)
        box = region_box(job.box, shape, job.mip, job.clip, progress)
        if job.mode == "affinities":
            prob = np.stack([to_probability(s.read(box, job.mip), job.invert) for s in sources])
        else:
            prob = read_probability(sources, box, job.mip, job.instances.weights, job.invert)
        voxel_size = output_voxel_size(sources[0], job.voxel_size, progress, "instances")
    mode, knobs = job.mode, job.affinity
    if mode == "auto":
        mode = auto_mode(voxel_size, job.mip)
        knobs = replace(knobs, sections=knobs.sections or is_anisotropic(voxel_size, job.mip))
        report(progress, Event.log(f"mode auto: {mode} (voxel size {voxel_size})", "instances"))
    cfg = membrane_threshold(job, progress) if mode in THRESHOLD_MODES else job.instances
    labels = segment_volume(prob, mode, cfg, job.agglomeration, job.min_size_3d,
                            progress, cancel, knobs)
    path = write_instances(labels, job.output, volume_shape=shape, box=box, mip=job.mip,
                           voxel_size=voxel_size, name=f"instances ({mode})",
                           colors=job.colors, attrs={"job": job.to_dict(), "mode": mode})
    report(progress, Event.artifact(path, "instances", "instance segmentation"))
    return InstanceResult(path, box, int(labels.max(initial=0)), mode)
