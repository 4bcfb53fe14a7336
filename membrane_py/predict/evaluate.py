"""Evaluate a trained network on sample images: pictures and numbers.

For each image: prediction, probability and overlay PNGs; with labels, an error map (the
EM with false membrane in magenta and missed membrane in cyan) and a metric table (pixel
error, per-class IoU/Dice and, for membrane maps, the ISBI scores).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from membrane_py.atomic import write_text_atomic
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.codes import encode_label_png, probability_to_u8, write_png
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.infer.batchnorm import ADAPT_PATCHES, crops, settle_adapt_bn
from membrane_py.infer.engine import TiledPredictor, load_predictor
from membrane_py.infer.torch_backend import TorchBackend
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.models.unet import UNet
from membrane_py.train.metrics import class_scores, membrane_scores

# overlay colours (RGB) for classes 2..K; class 1 (background / non-membrane) stays grey
PALETTE = np.array([[255, 40, 40], [40, 200, 40], [60, 90, 255], [255, 200, 0], [220, 0, 220],
                    [0, 220, 220]], dtype=np.float32)


#: membrane threshold of the ISBI scores when neither the user nor the model gives one
DEFAULT_THRESHOLD = 0.5

#: error map colours (RGB): predicted membrane where the labels say otherwise, and
#: labelled membrane the network missed
FALSE_MEMBRANE = np.array([255, 0, 255], dtype=np.float32)
MISSED_MEMBRANE = np.array([0, 255, 255], dtype=np.float32)


def error_map(image: np.ndarray, pred: np.ndarray, gt: np.ndarray,
              target: int) -> np.ndarray:
    """RGB picture of where a prediction disagrees with the labels about class ``target``
    (1-based, e.g. membrane): false ``target`` in :data:`FALSE_MEMBRANE`, missed ``target``
    in :data:`MISSED_MEMBRANE`, blended over the grey EM. ``pred`` holds classes 1..K,
    ``gt`` 0..K; unlabelled pixels (0) are never errors."""
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    labelled = gt > 0
    for mask, colour in (((pred == target) & (gt != target) & labelled, FALSE_MEMBRANE),
                         ((pred != target) & (gt == target), MISSED_MEMBRANE)):
        rgb[mask] = 0.3 * rgb[mask] + 0.7 * colour
    return rgb.astype(np.uint8)


def predict_probabilities(model: UNet, image: np.ndarray, cfg: PreprocessConfig,
                          device: torch.device | None = None, amp: bool = True) -> np.ndarray:
    """Class probabilities (K, y, x) float32 of one uint8 image of any size, through the
    tiled PyTorch engine (for a bare network; checkpoints go through ``load_predictor``);
    ``amp``: bf16 autocast on CUDA."""
    device = device or next(model.parameters()).device
    precision = "bf16" if amp and device.type == "cuda" else "fp32"
    backend = TorchBackend(model, device, precision=precision)
    names = [f"class_{i + 1}" for i in range(backend.n_classes)]
    return TiledPredictor(backend, names, cfg).predict(image[None])[0]


def render(image: np.ndarray, prob: np.ndarray) -> dict[str, np.ndarray]:
    """The pictures: class map in the label-PNG code (class k -> round(255 (k-1)/(K-1)), so
    membrane is white and the picture is valid ground truth), probability of the last class
    in the probability-tile code (1..255, membrane bright), and prediction tinted over the
    image."""
    k = prob.shape[0]
    pred = prob.argmax(0)
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    for c in range(1, k):
        mask = pred == c
        rgb[mask] = 0.5 * rgb[mask] + 0.5 * PALETTE[(c - 1) % len(PALETTE)]
    return {
        "prediction": encode_label_png(pred + 1, k),
        "probability": probability_to_u8(prob[-1]),
        "overlay": rgb.astype(np.uint8),
    }


def evaluate_images(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path,
                    labels: list[str | Path] | None = None, label_format: str = "auto",
                    device: str = "auto", threshold: float | None = None,
                    method: str = "watershed",
                    tta: int = 1, precision: str = "auto", adapt_bn: bool | None = None,
                    progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> list[dict]:
    """Predict each image with ``checkpoint`` (a ``.pt`` checkpoint or an ``.onnx`` model, run
    by the tiled engine), write ``<stem>_{prediction,probability,overlay}.png`` to
    ``out_dir`` and, with labels, ``<stem>_errors.png`` (:func:`error_map` for the membrane
    class, else the last class) and ``metrics.json`` / ``metrics.csv`` (rows per image plus
    a ``mean`` row). Returns the metric rows (empty without labels). ``label_format`` as in
    :mod:`membrane_py.augment.labels`; ``auto`` is decided on the first label image and kept
    for the others. ``threshold``: pixels below it are cell interior in the segmentation the
    ISBI scores use; None takes the model's own (chosen by whole-section validation in
    training), else :data:`DEFAULT_THRESHOLD`. ``tta`` and ``precision`` are the engine's
    (:func:`~membrane_py.infer.engine.load_predictor`); int8 calibrates on the first image.
    ``adapt_bn`` re-estimates the batch-norm statistics on crops of the images first
    (:mod:`membrane_py.infer.batchnorm`); None: when the checkpoint asks for it."""
    from membrane_py.augment import labels as L

    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} label files; give one each")
    adapt = settle_adapt_bn(adapt_bn, checkpoint)
    predictor = load_predictor(checkpoint, device=device, tta=tta, precision=precision,
                               calibration=lambda: L.read_image(images[0])[None],
                               adapt_bn=(lambda: crops([L.read_image(p) for p in images],
                                                       ADAPT_PATCHES)) if adapt else None)
    if adapt:
        why = "asked" if adapt_bn else "the network validated better so in training"
        report(progress, Event.log(f"batch norm adapted to these images ({why})", "evaluate"))
    threshold, source = pick_threshold(threshold, predictor.threshold)
    names = predictor.class_names
    k = predictor.n_classes
    membrane = k == 2 and names[-1] == "membrane"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(images):
        check_cancel(cancel)
        path = Path(path)
        image = L.read_image(path)
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"{path}: EM images must be 8-bit grayscale, got {image.dtype} "
                             f"{image.shape}")
        prob = predictor.predict(image[None])[0]
        for kind, pic in render(image, prob).items():
            write_png(out / f"{path.stem}_{kind}.png", pic)
        if labels is not None:
            raw = L.decode_label_image(L.read_image(labels[i]))
            if label_format == "auto":
                label_format = L.detect_label_format([raw], max(k, L.MAX_CLASSES))
            (gt,), _ = L.convert_labels([raw], label_format, k, max(k, L.MAX_CLASSES))
            if gt.shape != image.shape:
                raise ValueError(f"{labels[i]}: label shape {gt.shape} != image {image.shape}")
            target = names.index("membrane") + 1 if "membrane" in names else k
            write_png(out / f"{path.stem}_errors.png",
                      error_map(image, prob.argmax(0) + 1, gt, target))
            row = {"image": path.name, **class_scores(prob.argmax(0) + 1, gt, k, names)}
            if membrane and (gt == 1).any():
                row.update(membrane_scores(prob[1], gt, threshold, method))
            rows.append(row)
        report(progress, Event.progress("evaluate", i + 1, len(images), path.name))
    if rows:
        if membrane:
            report(progress, Event.log(f"V_rand and V_info at membrane threshold {threshold:g} "
                                       f"({source})", "evaluate"))
        keys = [key for key in rows[0] if key != "image"]
        mean = {"image": "mean", **{key: float(np.nanmean([r.get(key, np.nan) for r in rows]))
                                    for key in keys}}
        rows.append(mean)
        _write_tables(out, rows)
    return rows


def pick_threshold(given: float | None, model: float | None) -> tuple[float, str]:
    """The membrane threshold to use, ``given`` (an explicit option), else the model's,
    else :data:`DEFAULT_THRESHOLD`, and where it came from (for the user)."""
    if given is not None:
        return float(given), "given"
    if model is not None:
        return float(model), "the model's, chosen by whole-section validation in training"
    return DEFAULT_THRESHOLD, "the default: the model records none"


def _write_tables(out: Path, rows: list[dict]) -> None:
    write_text_atomic(out / "metrics.json", json.dumps(rows, indent=2, allow_nan=True))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "metrics.csv", buf.getvalue())


@dataclass
class EvaluateJob(JobSpec):
    """Evaluate ``checkpoint`` (``.pt`` or ``.onnx``) on EM ``images``, writing pictures and,
    with labels, metrics to ``out``. Labels come from ``labels`` (one file per image, in
    order) or from ``label_dir`` (paired with the images by file name). ``threshold``:
    None takes the model's (see :func:`evaluate_images`). ``tta``, ``precision`` and
    ``adapt_bn`` are the engine's, as in prediction (int8 calibrates on the first image; the
    batch norm adapts to crops of all the images; None: when the checkpoint asks for it)."""

    kind: ClassVar[str] = "evaluate"
    checkpoint: str
    images: list[str]
    out: str = "evaluation"
    labels: list[str] | None = None
    label_dir: str | None = None
    label_format: str = "auto"
    device: str = "auto"
    threshold: float | None = None
    method: str = "watershed"
    tta: int = 1
    precision: str = "auto"
    adapt_bn: bool | None = None

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("give at least one EM image to evaluate")
        from membrane_py.augment.labels import LABEL_FORMATS

        if self.label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got "
                             f"{self.label_format!r}")
        if self.labels and self.label_dir:
            raise ValueError("give labels either file by file or as a folder (label_dir), "
                             "not both")

    def image_files(self) -> list[str]:
        """The images, a folder among them standing for the images it holds."""
        from membrane_py.augment import labels as L

        return [str(f) for p in self.images
                for f in (L.list_images(p) if Path(p).is_dir() else [p])]

    def label_files(self) -> list[str] | None:
        """One label file per image, or None when the job has no labels."""
        if self.label_dir is None:
            return self.labels or None
        from membrane_py.augment import labels as L
        from membrane_py.augment.patches import pair_by_name

        images = [Path(p) for p in self.image_files()]
        by_image = dict(pair_by_name(images, L.list_images(self.label_dir)))
        return [str(by_image[p]) for p in images]


@dataclass
class EvaluateResult(Result):
    """The folder of pictures and the metric rows (one per image plus ``mean``; empty
    without labels)."""

    out: Path
    rows: list[dict]

    def summary(self) -> str:
        tables = f"; metrics in {self.out / 'metrics.json'} and metrics.csv" if self.rows else ""
        return f"pictures written to {self.out}{tables}"


def run_evaluation(job: EvaluateJob, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> EvaluateResult:
    """The evaluate job (see :func:`evaluate_images`)."""
    rows = evaluate_images(job.checkpoint, job.image_files(), job.out, labels=job.label_files(),
                           label_format=job.label_format, device=job.device,
                           threshold=job.threshold, method=job.method, tta=job.tta,
                           precision=job.precision, adapt_bn=job.adapt_bn,
                           progress=progress, cancel=cancel)
    report(progress, Event.artifact(job.out, "evaluate", "evaluation pictures"))
    return EvaluateResult(Path(job.out), rows)
