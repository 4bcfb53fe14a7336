"""Job specs and folder drivers: ground-truth conversion over folders and PNG patch writing.

Patch folders keep mEMbrain's layout: ``<name>_%05d.png`` (counting from 1 per source) in an
image folder and a label folder, labels stored as ``round(255 (k - 1) / (K - 1))``. Patches
never contain unknown pixels (saturated sampling), so that encoding loses nothing. A
``manifest.json`` in both folders records K, every parameter, the sources and each patch's
pose and augmentation. Image and label files are paired by name, never by sort order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from membrane_py.atomic import write_bytes_atomic
from membrane_py.augment import labels as L
from membrane_py.augment.preprocess import apply_clahe
from membrane_py.augment.sampling import SaturatedSampler, count_patches, cut_patch, warn_if_few
from membrane_py.augment.transforms import AugmentConfig, augment_pair
from membrane_py.codes import encode_label_png, write_png
from membrane_py.events import CancelToken, Progress, ProgressCallback, report
from membrane_py.geometry import Box
from membrane_py.volumes.base import downsample_xy

MANIFEST = "manifest.json"
LABEL_SUFFIXES = ("_border", "_skel", "_labels", "_label", "_gt", "_mask", "_seg")
CONTRAST_MODES = ("none", "image", "tile")


def _label_key(stem: str) -> str:
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_by_name(images: list[Path], labels: list[Path]) -> list[tuple[Path, Path]]:
    """Pair each image with the label of the same stem (a label may add _border, _skel, ...)."""
    by_stem: dict[str, Path] = {}
    for lab in labels:
        for key in {lab.stem, _label_key(lab.stem)}:
            if key in by_stem and by_stem[key] != lab:
                raise ValueError(f"labels {by_stem[key].name} and {lab.name} both match "
                                 f"image name {key!r}; keep one")
            by_stem[key] = lab
    pairs, missing = [], []
    for img in images:
        if img.stem in by_stem:
            pairs.append((img, by_stem[img.stem]))
        else:
            missing.append(img.name)
    if missing:
        raise ValueError(f"no label image named like {missing[:5]} (of {len(missing)} images "
                         "without labels); labels pair by file name, e.g. 'sec01.png' with "
                         "'sec01.png' or 'sec01_border.png'")
    return pairs


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """'0:2,255:1' -> {0: 2, 255: 1}; None or '' -> None."""
    if not text:
        return None
    try:
        return {int(a): int(b) for a, b in (item.split(":") for item in text.split(","))}
    except ValueError as e:
        raise ValueError(f"label map must look like '0:2,255:1' (value:class), got {text!r}") from e


def _to_classes(raw: np.ndarray, label_map: dict[int, int] | None, name: str) -> np.ndarray:
    classes = L.map_values(raw, label_map) if label_map else raw
    if classes.min() < 0 or classes.max() > 65535:
        raise ValueError(f"{name}: label values {int(classes.min())}..{int(classes.max())} are not "
                         "classes 0..K; convert instance ids first (membrane gt membrane) or "
                         "pass a label map")
    return classes.astype(np.uint16)


def _read_em(path: Path) -> np.ndarray:
    image = L.read_image(path)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"{path.name}: EM must be 8-bit grayscale, got {image.dtype} "
                         f"{image.shape}; convert it first")
    return image


def _contrast(image: np.ndarray, mode: str, tile: int) -> np.ndarray:
    """CLAHE over the whole image or on each non-overlapping tile x tile block."""
    if mode == "image":
        return apply_clahe(image)
    if mode == "tile":
        out = image.copy()
        for y in range(0, image.shape[0], tile):
            for x in range(0, image.shape[1], tile):
                out[y:y + tile, x:x + tile] = apply_clahe(image[y:y + tile, x:x + tile])
        return out
    return image


@dataclass
class PatchJob:
    """Cut saturated training patches from paired EM and label folders into PNG patch folders."""

    images: str
    labels: str
    out_images: str
    out_labels: str
    patch_size: int = 256
    density: float = 100.0  # patches per 1024^2 annotated pixels
    rotate: bool = True
    angle_step: float = 5.0
    downsample: int = 1
    contrast: str = "none"  # "image" or "tile": CLAHE baked into the written EM
    label_map: dict[int, int] | None = None
    n_classes: int | None = None  # default: the largest class present
    augment: AugmentConfig | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.contrast not in CONTRAST_MODES:
            raise ValueError(f"contrast must be one of {CONTRAST_MODES}, got {self.contrast!r}")
        if self.patch_size < 2 or self.downsample < 1:
            raise ValueError("patch_size must be >= 2 and downsample >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict() if self.augment else None
        if self.label_map:
            d["label_map"] = {str(k): v for k, v in self.label_map.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PatchJob:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        if kw.get("augment"):
            kw["augment"] = AugmentConfig.from_dict(kw["augment"])
        if kw.get("label_map"):
            kw["label_map"] = {int(k): int(v) for k, v in kw["label_map"].items()}
        return cls(**kw)


@dataclass
class PatchSource:
    """One image/label pair after loading (classes 0..K, downsampled, contrast applied)."""

    name: str
    image_path: str
    label_path: str
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    n_wanted: int = 0


def load_sources(job: PatchJob) -> list[PatchSource]:
    """Read, pair by name, check and prepare every source of a job."""
    pairs = pair_by_name(L.list_images(job.images), L.list_images(job.labels))
    sources, used = [], set()
    for img_path, lab_path in pairs:
        image = _read_em(img_path)
        label = _to_classes(L.read_label_image(lab_path), job.label_map, lab_path.name)
        if image.shape != label.shape:
            raise ValueError(f"{img_path.name} is {image.shape} but its label {lab_path.name} is "
                             f"{label.shape}; they must have the same size")
        n_wanted = count_patches(label, job.density)
        if job.downsample > 1:
            image = downsample_xy(image[None], job.downsample, labels=False)[0]
            label = downsample_xy(label[None], job.downsample, labels=True)[0]
        image = _contrast(image, job.contrast, job.patch_size)
        name, k = img_path.stem, 2
        while name in used:  # identical stems (e.g. a.png and a.tif) never overwrite each other
            name, k = f"{img_path.stem}_{k}", k + 1
        used.add(name)
        sources.append(PatchSource(name, str(img_path), str(lab_path), image, label, n_wanted))
    return sources


def generate_patches(job: PatchJob, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> dict:
    """Write the patch pairs and manifests of ``job``; returns the manifest."""
    sources = load_sources(job)
    annotated = sum(int(np.count_nonzero(s.label)) for s in sources)
    if annotated == 0:
        raise ValueError(f"no annotated pixel in any label image of {job.labels} (all 0 = unknown)")
    n_classes = job.n_classes or max(int(s.label.max()) for s in sources)
    if max(int(s.label.max()) for s in sources) > n_classes or n_classes < 2:
        raise ValueError(f"n_classes={n_classes} but labels hold classes up to "
                         f"{max(int(s.label.max()) for s in sources)} (need K >= 2)")
    out_img, out_lab = Path(job.out_images), Path(job.out_labels)
    if not job.overwrite:
        for folder in (out_img, out_lab):
            clash = [s.name for s in sources
                     if folder.is_dir() and any(folder.glob(f"{s.name}_*.png"))]
            if clash:
                raise FileExistsError(f"{folder} already holds patches of {clash[:3]}; choose an "
                                      "empty folder or pass overwrite")
    records, summary = [], []
    for i, src in enumerate(sources):
        if cancel is not None:
            cancel.check()
        report(progress, Progress("patches", i, len(sources), f"{src.name}"))
        rng = np.random.default_rng([job.seed, i])
        summary_entry = {"name": src.name, "image": src.image_path, "label": src.label_path,
                         "n_patches": 0, "n_valid_centres": 0}
        summary.append(summary_entry)
        if src.n_wanted == 0:
            continue
        sampler = SaturatedSampler(src.label, job.patch_size, job.rotate, job.angle_step)
        summary_entry["n_valid_centres"] = sampler.n_valid
        if sampler.n_valid == 0:
            warn_if_few(0, src.n_wanted, src.name)
            continue
        warn_if_few(sampler.n_valid, src.n_wanted, src.name)
        for j, pose in enumerate(sampler.sample(src.n_wanted, rng), start=1):
            image = cut_patch(src.image, pose, job.patch_size, nearest=False)
            label = cut_patch(src.label, pose, job.patch_size, nearest=True)
            applied = {}
            if job.augment is not None:
                image, label, applied = augment_pair(image, label, job.augment, rng)
            fname = f"{src.name}_{j:05d}.png"
            write_png(out_img / fname, image)
            write_png(out_lab / fname, encode_label_png(label, n_classes))
            records.append({"file": fname, "source": i, **pose.to_dict(), "augment": applied})
        summary_entry["n_patches"] = src.n_wanted
    report(progress, Progress("patches", len(sources), len(sources), "done"))
    if not records:
        raise ValueError("no patch was written: no annotated region is large enough for a "
                         f"{job.patch_size}^2 patch (or density too low)")
    manifest = {"format": "membrane-py patches 1", "n_classes": n_classes,
                "label_encoding": "class k stored as round(255*(k-1)/(K-1)); no unknown pixels",
                "patch_size": job.patch_size, "job": job.to_dict(), "sources": summary,
                "patches": records}
    text = json.dumps(manifest, indent=1).encode()
    for folder in (out_img, out_lab):
        write_bytes_atomic(folder / MANIFEST, text)
    return manifest


def read_manifest(*folders: str | Path) -> dict | None:
    """The first manifest.json found in the given folders, or None."""
    for folder in folders:
        path = Path(folder) / MANIFEST
        if path.is_file():
            return json.loads(path.read_text())
    return None


GT_KINDS = ("membrane", "skeleton", "import")
IMPORT_MODES = ("binary", "map", "values")
_GT_SUFFIX = {"membrane": "_border", "skeleton": "_skel", "import": "_label"}


@dataclass
class GtJob:
    """Convert a folder or stack of ground truth.

    kinds: 'membrane' (instances -> membrane labels), 'skeleton' (membrane -> skeleton labels),
    'import' (any label encoding -> class PNGs, 0 = unknown and 1..K, read by `membrane train
    --label-format classes` and `membrane patches`: mode 'binary' (a two-valued mask,
    ``membrane_value`` = membrane -> 2, the other value -> 1), 'map' (``label_map`` value ->
    class; every value present needs a class, 0 = unknown) or 'values' (sorted distinct
    non-zero values -> 1..K)).
    ``box`` / ``mip`` restrict reading a volume (e.g. a VAST segmentation layer) to a region.
    """

    kind: str
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
    box: Box | None = None
    mip: int = 0

    def __post_init__(self) -> None:
        if self.kind not in GT_KINDS:
            raise ValueError(f"kind must be one of {GT_KINDS}, got {self.kind!r}")
        if self.kind == "import" and self.mode not in IMPORT_MODES:
            raise ValueError(f"import mode must be one of {IMPORT_MODES}, got {self.mode!r}")
        if self.kind == "import" and self.mode == "map" and not self.label_map:
            raise ValueError("import mode 'map' needs a label map such as '0:2,255:1'")

    def convert(self, labels: np.ndarray) -> np.ndarray:
        """One 2D label image -> the uint8 PNG this job writes."""
        if self.kind == "import":
            return self._import(labels)
        if self.label_map:
            labels = L.map_values(labels, self.label_map)
        if self.kind == "membrane":
            return L.instances_to_membrane(labels, self.thickness, self.fill_ecs, self.unknown_id)
        return L.membrane_to_skeleton(labels, self.has_unknown, self.filter_size)

    def _import(self, labels: np.ndarray) -> np.ndarray:
        if self.mode == "binary":
            return L.binary_to_classes(labels, self.membrane_value)
        if self.mode == "map":
            classes = L.map_values(labels, self.label_map)
            return classes.astype(np.uint8 if classes.max(initial=0) < 256 else np.uint16)
        return L.values_to_classes(labels, [int(v) for v in np.unique(labels) if v != 0])


def _gt_inputs(job: GtJob) -> list[tuple[str, np.ndarray | Path]]:
    """(output stem, 2D label source) for a folder of images or every slice of a stack."""
    path = Path(job.input)
    if path.is_dir() and job.box is None:
        return [(p.stem, p) for p in L.list_images(path)]
    stack = L.read_label_stack(job.input, job.box, job.mip)
    stem = "vast" if job.input.startswith("vast") else Path(job.input.partition(":")[0]).stem
    z0 = job.box.z0 if job.box is not None else 0
    return [(f"{stem}_{z0 + z:04d}", stack[z]) for z in range(stack.shape[0])]


def run_gt_job(job: GtJob, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> list[Path]:
    """Convert every image (or slice); write ``<stem>_border|_skel|_label.png`` atomically."""
    suffix = _GT_SUFFIX[job.kind]
    inputs = _gt_inputs(job)
    written = []
    for i, (stem, item) in enumerate(inputs):
        if cancel is not None:
            cancel.check()
        report(progress, Progress(f"gt {job.kind}", i, len(inputs), stem))
        labels = L.read_label_image(item) if isinstance(item, Path) else item
        out = Path(job.output) / f"{stem}{suffix}.png"
        write_png(out, job.convert(labels))
        written.append(out)
    report(progress, Progress(f"gt {job.kind}", len(inputs), len(inputs), "done"))
    return written
