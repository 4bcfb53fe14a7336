"""The patches job: cut saturated training patches from paired EM and label folders.

Patch folders keep mEMbrain's layout: ``<name>_%05d.png`` (counting from 1 per source) in an
image folder and a label folder, labels stored as ``round(255 (k - 1) / (K - 1))``. Patches
never contain unknown pixels (saturated sampling), so that encoding loses nothing. A
``manifest.json`` in both folders records K, every parameter, the sources and each patch's
pose and augmentation. Image and label files are paired by name, never by sort order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from membrane_py.atomic import write_bytes_atomic
from membrane_py.augment import labels as L
from membrane_py.augment.preprocess import apply_clahe
from membrane_py.augment.sampling import SaturatedSampler, count_patches, cut_patch
from membrane_py.augment.transforms import AugmentConfig, augment_pair
from membrane_py.codes import encode_label_png, write_png
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report, warn
from membrane_py.jobs.spec import JobSpec, Result
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
        raise ValueError(f"{len(missing)} of {len(images)} images have no label named like them "
                         f"(e.g. {', '.join(missing[:3])}); {_folder_text(images)} holds "
                         f"{_names_text(images)}, {_folder_text(labels)} holds "
                         f"{_names_text(labels)}; labels pair by file name ('sec01.png' with "
                         "'sec01.png' or 'sec01_border.png'); `membrane gt ... --images "
                         "EM_FOLDER` names labels after the EM")
    return pairs


def _folder_text(files: list[Path]) -> str:
    folders = {str(p.parent) for p in files}
    return folders.pop() if len(folders) == 1 else "the list"


def _names_text(files: list[Path]) -> str:
    """'3 files: a.png, b.png, c.png' (the first few names)."""
    names = ", ".join(p.name for p in files[:3])
    return f"{len(files)} file{'s' if len(files) != 1 else ''}: {names}" + (
        ", ..." if len(files) > 3 else "")


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """'0:2,255:1' -> {0: 2, 255: 1}; None or '' -> None."""
    if not text:
        return None
    try:
        return {int(a): int(b) for a, b in (item.split(":") for item in text.split(","))}
    except ValueError as e:
        raise ValueError(f"label map must look like '0:2,255:1' (value:class), got {text!r}") from e


def resolve_label_format(label_dir: str | Path, raw: list[np.ndarray], label_format: str,
                         n_classes: int | None, max_classes: int) -> tuple[str, int | None]:
    """The format and K to read a label folder with: ``auto`` on a patch folder (one with a
    manifest.json) is ``codes`` with the manifest's K, else it is read from the values."""
    manifest = read_manifest(label_dir) if label_format == "auto" else None
    if manifest is not None:
        return "codes", n_classes or int(manifest["n_classes"])
    if label_format == "auto":
        return L.detect_label_format(raw, max_classes), n_classes
    return label_format, n_classes


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
class PatchJob(JobSpec):
    """Cut saturated training patches from paired EM and label folders into PNG patch folders.

    ``label_format`` says how label values mean classes (``auto``, ``classes``, ``codes``,
    ``isbi``: see :mod:`membrane_py.augment.labels`); ``label_map`` instead maps raw label
    values to classes (e.g. ISBI ``{0: 2, 255: 1}``); more than ``max_classes`` classes is
    refused. ``augment`` (None = none) is applied while writing; ``contrast`` bakes CLAHE into the
    EM (``image`` or per ``tile``).
    """

    kind: ClassVar[str] = "patches"

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
    label_format: str = "auto"
    label_map: dict[int, int] | None = None
    n_classes: int | None = None  # default: the largest class present
    max_classes: int = L.MAX_CLASSES
    augment: AugmentConfig | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.contrast not in CONTRAST_MODES:
            raise ValueError(f"contrast must be one of {CONTRAST_MODES}, got {self.contrast!r}")
        if self.patch_size < 2 or self.downsample < 1:
            raise ValueError("patch_size must be >= 2 and downsample >= 1")
        if self.label_format not in L.LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {L.LABEL_FORMATS}, got "
                             f"{self.label_format!r}")
        if self.label_map and self.label_format not in ("auto", "classes"):
            raise ValueError("a label map already says what each value means; leave "
                             "label_format at auto")


@dataclass
class PatchResult(Result):
    """Where the patches went: the manifest (a copy sits in both folders) and counts."""

    manifest: Path
    n_patches: int
    n_classes: int

    def summary(self) -> str:
        return (f"wrote {self.n_patches} patch pairs ({self.n_classes} classes); manifest "
                f"{self.manifest}")


@dataclass
class PatchSource:
    """One image/label pair after loading (classes 0..K, downsampled, contrast applied)."""

    name: str
    image_path: str
    label_path: str
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)
    n_wanted: int = 0


def pair_classes(job: PatchJob, pairs: list[tuple[Path, Path]]) -> list[np.ndarray]:
    """The label images of ``pairs`` as classes (0 unknown, 1..K) in the job's label format,
    decided once for all of them (``auto``: from their values)."""
    raw = [L.read_label_image(lab_path) for _, lab_path in pairs]
    if job.label_map:
        raw = [L.map_values(r, job.label_map) for r in raw]
        fmt, n_classes = "classes", job.n_classes
    else:
        fmt, n_classes = resolve_label_format(job.labels, raw, job.label_format, job.n_classes,
                                              job.max_classes)
    classes, _ = L.convert_labels(raw, fmt, n_classes, job.max_classes)
    return [c.astype(np.uint16) for c in classes]


def load_pair(job: PatchJob, img_path: Path, lab_path: Path, label: np.ndarray,
              name: str) -> PatchSource:
    """One image and its label classes as the job cuts them: downsampling and contrast
    applied."""
    image = _read_em(img_path)
    if image.shape != label.shape:
        raise ValueError(f"{img_path.name} is {image.shape} but its label {lab_path.name} is "
                         f"{label.shape}; they must have the same size")
    n_wanted = count_patches(label, job.density)
    if job.downsample > 1:
        image = downsample_xy(image[None], job.downsample, labels=False)[0]
        label = downsample_xy(label[None], job.downsample, labels=True)[0]
    image = _contrast(image, job.contrast, job.patch_size)
    return PatchSource(name, str(img_path), str(lab_path), image, label, n_wanted)


def load_sources(job: PatchJob) -> list[PatchSource]:
    """Read, pair by name, check and prepare every source of a job."""
    pairs = pair_by_name(L.list_images(job.images), L.list_images(job.labels))
    sources, used = [], set()
    for (img_path, lab_path), label in zip(pairs, pair_classes(job, pairs), strict=True):
        name, k = img_path.stem, 2
        while name in used:  # identical stems (e.g. a.png and a.tif) never overwrite each other
            name, k = f"{img_path.stem}_{k}", k + 1
        used.add(name)
        sources.append(load_pair(job, img_path, lab_path, label, name))
    return sources


def valid_centre_preview(job: PatchJob) -> tuple[PatchSource, np.ndarray]:
    """The job's first source and where patch centres may lie in it (the saturated-sampling
    mask), so a user sees what the patch size and angles allow before cutting patches."""
    pairs = pair_by_name(L.list_images(job.images), L.list_images(job.labels))
    if not pairs:
        raise ValueError(f"no image/label pair with matching names in {job.images} and "
                         f"{job.labels}")
    img_path, lab_path = pairs[0]
    src = load_pair(job, img_path, lab_path, pair_classes(job, pairs[:1])[0], img_path.stem)
    if not src.label.any():
        return src, np.zeros(src.label.shape, bool)
    return src, SaturatedSampler(src.label, job.patch_size, job.rotate, job.angle_step).valid


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
        check_cancel(cancel)
        report(progress, Event.progress("patches", i, len(sources), f"{src.name}"))
        rng = np.random.default_rng([job.seed, i])
        summary_entry = {"name": src.name, "image": src.image_path, "label": src.label_path,
                         "n_patches": 0, "n_valid_centres": 0}
        summary.append(summary_entry)
        if src.n_wanted == 0:
            continue
        sampler = SaturatedSampler(src.label, job.patch_size, job.rotate, job.angle_step)
        summary_entry["n_valid_centres"] = sampler.n_valid
        if sampler.n_valid == 0:
            continue
        if sampler.n_valid < src.n_wanted:
            warn(progress, f"{src.name}: only {sampler.n_valid} valid patch centres for "
                 f"{src.n_wanted} patches; centres will repeat (at other angles)", "patches")
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
    report(progress, Event.progress("patches", len(sources), len(sources), "done"))
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


def run_patches(job: PatchJob, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> PatchResult:
    """The patches job (see :func:`generate_patches`)."""
    manifest = generate_patches(job, progress, cancel)
    path = Path(job.out_images) / MANIFEST
    report(progress, Event.artifact(path, "patches", "patch manifest"))
    return PatchResult(path, len(manifest["patches"]), manifest["n_classes"])
