"""Training logs: a human-readable ``.log`` (mEMbrain's fields plus one line per epoch) and a
JSON-lines metrics log (one object per logged iteration or epoch) for plots and scripts."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from membrane_py.train.config import TrainJob


def transfer_summary(cfg: TrainJob) -> str:
    """One line: which weights train and which earlier data sets are replayed."""
    mode = "none (new network)" if not (cfg.pretrained or cfg.resume) else cfg.transfer_mode
    if cfg.transfer_mode == "leaky":
        mode += f" (encoder lr x{cfg.leaky_ratio})"
    elif cfg.transfer_mode in ("last_layer", "freeze_encoder"):
        mode += f" (frozen batch norm: {cfg.frozen_bn})"
    if cfg.episodic:
        mode += (f", episodic memory: {cfg.episodic_ratio:g} of each batch from "
                 f"{len(cfg.episodic)} earlier data set(s)")
    return mode


def header_fields(cfg: TrainJob, n_classes: int, checkpoint: Path) -> list[tuple[str, object]]:
    """The fields mEMbrain wrote at the top of its training log, plus a few of ours."""
    schedule = {"none": "No", "step": "Yes (step)", "cosine": "Yes (cosine)"}[cfg.schedule]
    drop = (f"x{cfg.step_factor} every {cfg.step_epochs} epochs" if cfg.schedule == "step"
            else "none")
    return [
        ("Trained Network Path", checkpoint),
        ("Ground Truth Input Directory", cfg.image_dir or "(given as a dataset)"),
        ("Ground Truth Label Directory", cfg.label_dir or "(given as a dataset)"),
        ("Base Network", cfg.pretrained or cfg.resume or "none"),
        ("Transfer mode", transfer_summary(cfg)),
        ("# of Epochs", cfg.epochs),
        ("# of Classes", n_classes),
        ("UNET Network Depth", cfg.depth),
        ("Base Filters", cfg.base_filters),
        ("Shuffle training data?", "Yes" if cfg.shuffle else "No"),
        ("Initial Learning Rate", cfg.lr),
        ("Learning Rate Schedule?", schedule),
        ("Learning Rate Drop", drop),
        ("Training optimizer/solver", cfg.optimizer),
        ("Loss", "affinity_bce" if cfg.target == "affinities" else cfg.loss),
        ("Mini-batch size", cfg.batch_size),
        ("Input patch size", cfg.patch_size),
        ("Preprocessing", cfg.preprocess),
        ("Seed", cfg.seed),
    ]


class TrainingLog:
    """Appends to ``<name>.log`` and ``<name>.metrics.jsonl`` next to the checkpoints."""

    def __init__(self, cfg: TrainJob, n_classes: int, device: str) -> None:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.text_path = out / f"{cfg.name}.log"
        self.jsonl_path = out / f"{cfg.name}.metrics.jsonl"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"membrane-py U-Net training log ({stamp})", f"Device: {device}"]
        lines += [f"{k}: {v}" for k, v in header_fields(cfg, n_classes, cfg.best_path)]
        self._append_text("\n".join(lines) + "\n")

    def _append_text(self, text: str) -> None:
        with open(self.text_path, "a", encoding="utf-8") as f:
            f.write(text)

    def record(self, kind: str, values: dict) -> None:
        """One JSON line ``{"kind": kind, "time": ..., **values}`` (NaN written as null)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in values.items()}
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **clean}) + "\n")

    def epoch(self, values: dict) -> None:
        self.record("epoch", values)
        parts = [f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
        self._append_text("epoch " + " ".join(parts) + "\n")

    def note(self, text: str) -> None:
        self._append_text(text + "\n")
