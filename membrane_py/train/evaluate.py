"""Evaluate a trained network on sample images: pictures and numbers.

For each image: prediction, probability and overlay PNGs; with labels, a metric table
(pixel error, per-class IoU/Dice and, for membrane maps, the ISBI scores).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.models.unet import UNet
from membrane_py.progress import CancelToken, Progress, ProgressCallback, report
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.device import autocast, pick_device
from membrane_py.train.metrics import class_scores, membrane_scores

# overlay colours (RGB) for classes 2..K; class 1 (background / non-membrane) stays grey
PALETTE = np.array([[255, 40, 40], [40, 200, 40], [60, 90, 255], [255, 200, 0], [220, 0, 220],
                    [0, 220, 220]], dtype=np.float32)


@torch.no_grad()
def predict_probabilities(model: UNet, image: np.ndarray, cfg: PreprocessConfig,
                          device: torch.device | None = None, amp: bool = True) -> np.ndarray:
    """Class probabilities (K, y, x) float32 of one uint8 image; pads bottom/right by
    reflection to a multiple of 2**depth and crops back."""
    device = device or next(model.parameters()).device
    h, w = image.shape
    m = model.config.multiple
    x = torch.from_numpy(preprocess(image, cfg))[None, None].to(device)
    pad_h, pad_w = (-h) % m, (-w) % m
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    model.eval()
    with autocast(device, amp):
        logits = model(x)
    return torch.softmax(logits.float(), dim=1)[0, :, :h, :w].cpu().numpy()


def write_png(path: Path, array: np.ndarray) -> None:
    """Atomic PNG write; RGB arrays are given in R, G, B order."""
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def render(image: np.ndarray, prob: np.ndarray) -> dict[str, np.ndarray]:
    """The pictures: class map (class k -> round(255 (k-1)/(K-1)), so membrane is white),
    probability of the last class (membrane bright), and prediction tinted over the image."""
    k = prob.shape[0]
    pred = prob.argmax(0)
    codes = np.floor(255.0 * np.arange(k) / (k - 1) + 0.5).astype(np.uint8)
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    for c in range(1, k):
        mask = pred == c
        rgb[mask] = 0.5 * rgb[mask] + 0.5 * PALETTE[(c - 1) % len(PALETTE)]
    return {
        "prediction": codes[pred],
        "probability": np.clip(prob[-1] * 255.0 + 0.5, 0, 255).astype(np.uint8),
        "overlay": rgb.astype(np.uint8),
    }


def evaluate_images(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path,
                    labels: list[str | Path] | None = None, label_format: str = "codes",
                    device: str = "auto", threshold: float = 0.5, method: str = "watershed",
                    progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> list[dict]:
    """Predict each image, write ``<stem>_{prediction,probability,overlay}.png`` to
    ``out_dir`` and, with labels, ``metrics.json`` / ``metrics.csv`` (rows per image plus a
    ``mean`` row). Returns the metric rows (empty without labels)."""
    from membrane_py.augment import labels as L
    from membrane_py.train.trainer import convert_labels

    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} label files; give one each")
    ck = load_checkpoint(checkpoint)
    dev = pick_device(device)
    model = ck.build_model().to(dev)
    pre = ck.preprocess_config
    k = len(ck.class_names)
    membrane = k == 2 and ck.class_names[-1] == "membrane"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(images):
        if cancel is not None:
            cancel.check()
        path = Path(path)
        image = L.read_image(path)
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"{path}: EM images must be 8-bit grayscale, got {image.dtype} "
                             f"{image.shape}")
        prob = predict_probabilities(model, image, pre, dev)
        for kind, pic in render(image, prob).items():
            write_png(out / f"{path.stem}_{kind}.png", pic)
        if labels is not None:
            raw = L.decode_label_image(L.read_image(labels[i]))
            (gt,), _ = convert_labels([raw], label_format, k)
            if gt.shape != image.shape:
                raise ValueError(f"{labels[i]}: label shape {gt.shape} != image {image.shape}")
            row = {"image": path.name, **class_scores(prob.argmax(0) + 1, gt, k, ck.class_names)}
            if membrane and (gt == 1).any():
                row.update(membrane_scores(prob[1], gt, threshold, method))
            rows.append(row)
        report(progress, Progress("evaluate", i + 1, len(images), path.name))
    if rows:
        keys = [key for key in rows[0] if key != "image"]
        mean = {"image": "mean", **{key: float(np.nanmean([r.get(key, np.nan) for r in rows]))
                                    for key in keys}}
        rows.append(mean)
        _write_tables(out, rows)
    return rows


def _write_tables(out: Path, rows: list[dict]) -> None:
    text = json.dumps(rows, indent=2, allow_nan=True)
    tmp = out / f".metrics.json.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, out / "metrics.json")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    tmp = out / f".metrics.csv.tmp{os.getpid()}"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, out / "metrics.csv")
