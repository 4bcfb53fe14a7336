"""The ground-truth job: convert a folder or stack of labels into the PNGs training reads.

Conversions: ``membrane`` (neuron instances -> membrane labels, 1 non-membrane, 2 membrane),
``skeleton`` (membrane labels -> skeleton labels) and ``import`` (any label encoding ->
class PNGs, 0 = unknown and 1..K). Inputs are a folder of label images, or any label volume
(:func:`~membrane_py.volumes.open_source`: .tif, .h5, .zarr, a VAST segmentation layer),
read in a mip-0 box at ``mip``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from membrane_py.augment import labels as L
from membrane_py.codes import class_preview
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.geometry import Box
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.volumes.open import open_source
from membrane_py.volumes.tiles import write_png

CONVERSIONS = ("membrane", "skeleton", "import")
IMPORT_MODES = ("binary", "map", "values")
#: subfolder of viewable previews of {1, 2} label PNGs (``codes.class_preview``); a
#: subfolder, so label folders still pair with image folders file by file
PREVIEW_DIR = "preview"
_SUFFIX = {"membrane": "_border", "skeleton": "_skel", "import": "_label"}


@dataclass
class GtJob(JobSpec):
    """Convert ground truth from ``input`` into PNGs in the folder ``output``.

    ``conversion``: ``membrane`` (``thickness`` px bands between instances; ``fill_ecs``
    turns label-0 pixels into membrane; ``unknown_id`` stays unknown), ``skeleton``
    (``has_unknown``, ``filter_size``) or ``import`` with ``mode`` ``binary`` (a two-valued
    mask; ``membrane_value`` -> 2, the other value -> 1), ``map`` (``label_map`` value ->
    class; 0 = unknown) or ``values`` (sorted distinct non-zero values -> 1..K).
    ``box``: mip-0 ``minx, maxx, miny, maxy, minz, maxz`` (inclusive, as VAST shows it) to
    read from a volume, at ``mip``. ``images``: the folder of EM sections a volume's labels
    belong to; slice z is then named after the z-th image (natural order), so the label
    folder pairs with the EM folder by name in ``patches``, ``train`` and ``evaluate``.
    Without it, slices are named ``<volume name>_<z>``.
    """

    kind: ClassVar[str] = "gt"
    conversion: str
    input: str
    output: str
    thickness: int = 3
    fill_ecs: bool = False
    unknown_id: int | None = None
    has_unknown: bool = True
    filter_size: int = 3
    label_map: dict[int, int] | None = None
    mode: str = "binary"
    membrane_value: int = 0
    box: list[int] | None = None
    mip: int = 0
    images: str | None = None
    mapping: str | None = None

    def __post_init__(self) -> None:
        if self.conversion not in CONVERSIONS:
            raise ValueError(f"conversion must be one of {CONVERSIONS}, got {self.conversion!r}")
        if self.conversion == "import" and self.mode not in IMPORT_MODES:
            raise ValueError(f"import mode must be one of {IMPORT_MODES}, got {self.mode!r}")
        if self.conversion == "import" and self.mode == "map" and not self.label_map:
            raise ValueError("import mode 'map' needs a label map such as '0:2,255:1'")
        if self.mip < 0:
            raise ValueError(f"mip must be >= 0, got {self.mip}")
        if self.box is not None:
            Box.from_vast_list(self.box)
        if self.mapping and self.conversion != "membrane":
            raise ValueError("a fragment -> body mapping applies to the membrane conversion only")

    def convert(self, labels: np.ndarray, pairs: np.ndarray | None = None) -> np.ndarray:
        """One 2D label image -> the uint8 PNG this job writes (``pairs``: the mapping read)."""
        if pairs is not None:
            labels = L.apply_mapping(labels, pairs)
        if self.conversion == "import":
            return self._import(labels)
        if self.label_map:
            labels = L.map_values(labels, self.label_map)
        if self.conversion == "membrane":
            return L.instances_to_membrane(labels, self.thickness, self.fill_ecs, self.unknown_id)
        return L.membrane_to_skeleton(labels, self.has_unknown, self.filter_size)

    def _import(self, labels: np.ndarray) -> np.ndarray:
        if self.mode == "binary":
            return L.binary_to_classes(labels, self.membrane_value)
        if self.mode == "map":
            classes = L.map_values(labels, self.label_map)
            return classes.astype(np.uint8 if classes.max(initial=0) < 256 else np.uint16)
        return L.values_to_classes(labels, [int(v) for v in np.unique(labels) if v != 0])


@dataclass
class GtResult(Result):
    """The folder written and the files in it."""

    output: Path
    files: list[Path]

    def summary(self) -> str:
        text = f"wrote {len(self.files)} label images to {self.output}"
        previews = self.output / PREVIEW_DIR
        return text + (f"; viewable previews (0/127/255) in {previews}" if previews.is_dir()
                       else "")


def _inputs(job: GtJob) -> list[tuple[str, np.ndarray | Path]]:
    """(output stem, 2D label source) for a folder of images or every slice of a stack."""
    path = Path(job.input)
    if path.is_dir() and job.box is None:
        if job.images is not None:
            raise ValueError(f"{job.input} is a folder of label images, which keep their names; "
                             "--images names the slices of a volume (.tif, .h5, .zarr, VAST)")
        return [(p.stem, p) for p in L.list_images(path)]
    box = None if job.box is None else Box.from_vast_list(job.box).to_mip(job.mip)
    stack = L.read_label_stack(job.input, box, job.mip)
    z0 = box.z0 if box is not None else 0
    if job.images is not None:
        names = _em_names(job, z0 + stack.shape[0])
        return [(names[z0 + z], stack[z]) for z in range(stack.shape[0])]
    stem = "vast" if job.input.startswith("vast") else Path(job.input.partition(":")[0]).stem
    return [(f"{stem}_{z0 + z:04d}", stack[z]) for z in range(stack.shape[0])]


def _em_names(job: GtJob, needed: int) -> list[str]:
    """The stems of the EM folder's images, one per section of the label volume."""
    em = L.list_images(job.images)
    with open_source(job.input, labels=True) as volume:
        depth = volume.shape_at(0)[0]
    if len(em) != depth or needed > depth:
        raise ValueError(f"{job.images} holds {len(em)} images ({em[0].name} ... {em[-1].name}) "
                         f"but the label volume {job.input} has {depth} sections; slice z takes "
                         "the name of the z-th EM image, so the counts must match")
    return [p.stem for p in em]


def run_gt(job: GtJob, progress: ProgressCallback | None = None,
           cancel: CancelToken | None = None) -> GtResult:
    """Convert every image (or slice); write ``<stem>_border|_skel|_label.png`` atomically."""
    suffix = _SUFFIX[job.conversion]
    pairs = L.read_mapping(job.mapping) if job.mapping else None
    inputs = _inputs(job)
    task = f"gt {job.conversion}"
    written = []
    for i, (stem, item) in enumerate(inputs):
        check_cancel(cancel)
        report(progress, Event.progress(task, i, len(inputs), stem))
        labels = L.read_label_image(item) if isinstance(item, Path) else item
        out = Path(job.output) / f"{stem}{suffix}.png"
        converted = job.convert(labels, pairs)
        write_png(out, converted)
        written.append(out)
        if (preview := class_preview(converted)) is not None:  # {1, 2} looks black
            write_png(Path(job.output) / PREVIEW_DIR / out.name, preview)
    report(progress, Event.progress(task, len(inputs), len(inputs), "done"))
    report(progress, Event.artifact(job.output, task, "label folder"))
    return GtResult(Path(job.output), written)
