"""Python API for transfer learning: fine-tune a checkpoint on new folders in one call.

    from membrane_py.transfer.finetune import fine_tune
    fine_tune("runs/fib25.pt", "isbi/images", "isbi/labels", mode="leaky", leaky_ratio=0.1,
              episodic=[("fib25/images", "fib25/labels")], episodic_ratio=0.25,
              label_format="isbi", out_dir="runs", name="isbi_from_fib25", epochs=5)

The run takes the parent's architecture and preprocessing unless ``options`` override them
(the weights must fit, and the pretrained features expect the same kind of input); the modes
are described in :mod:`membrane_py.train.transfer_modes`, episodic memory in
:mod:`membrane_py.train.episodic`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from membrane_py.events import CancelToken, ProgressCallback
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.trainer import TrainResult, run_training


def inherited_settings(parent: Checkpoint) -> dict:
    """The TrainJob fields a fine-tuning run takes from its parent by default: the
    architecture and the preprocessing."""
    arch = parent.model_config
    return {"arch": arch.arch, "depth": arch.depth, "base_filters": arch.base_filters,
            "norm": arch.norm, "dropout": arch.dropout,
            "preprocess": parent.preprocess_config.to_dict()}


def episodic_entry(images: str | Path, labels: str | Path,
                   label_format: str | None = None) -> dict:
    """One ``TrainJob.episodic`` item: an earlier data set's image and label folders."""
    entry = {"images": str(images), "labels": str(labels)}
    if label_format is not None:
        entry["label_format"] = label_format
    return entry


def parse_episodic(spec: str) -> dict:
    """``IMAGES:LABELS[:FORMAT]`` (``;`` instead of ``:`` on Windows, as in PATH) -> an
    episodic entry."""
    parts = spec.split(os.pathsep)
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"episodic data {spec!r} must be IMAGES{os.pathsep}LABELS"
                         f"[{os.pathsep}FORMAT]")
    return episodic_entry(*parts)


def finetune_config(pretrained: str | Path, **options) -> TrainJob:
    """A TrainJob starting from ``pretrained`` with its inherited settings, then ``options``."""
    parent = load_checkpoint(pretrained)
    return TrainJob(**{**inherited_settings(parent), "pretrained": str(pretrained),
                          **options})


def fine_tune(pretrained: str | Path, image_dir: str | Path, label_dir: str | Path, *,
              mode: str = "continuous", leaky_ratio: float = 0.1,
              episodic: Sequence[tuple] = (), episodic_ratio: float = 0.25,
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
              **options) -> TrainResult:
    """Fine-tune ``pretrained`` on matching image / label folders in transfer ``mode``,
    replaying each ``episodic`` data set, ``(images, labels[, label_format])``, as part of an
    ``episodic_ratio`` share of every batch. ``options`` are further TrainJob fields."""
    cfg = finetune_config(pretrained, image_dir=str(image_dir), label_dir=str(label_dir),
                          transfer_mode=mode, leaky_ratio=leaky_ratio,
                          episodic=[episodic_entry(*e) for e in episodic],
                          episodic_ratio=episodic_ratio, **options)
    return run_training(cfg, progress=progress, cancel=cancel)
