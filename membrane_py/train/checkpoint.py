"""One-file checkpoints loadable with ``torch.load(weights_only=True)``.

A checkpoint holds only plain Python types and tensors: the weights, the architecture config,
class names, the preprocessing prediction must repeat, the mip / voxel size / patch size
trained at, the training history and config, lineage (what it was fine-tuned from), and the
optimizer / scheduler state and epoch needed to resume.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from membrane_py.atomic import atomic_path
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.models.unet import UNet, UNetConfig

FORMAT = "membrane-py-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``build_model()`` returns the network in eval mode on CPU."""

    state_dict: dict[str, torch.Tensor]
    model: dict
    class_names: list[str]
    preprocess: dict
    mip: int = 0
    voxel_size: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    patch_size: int = 256
    history: list[dict] = field(default_factory=list)
    train_config: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    epoch: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    best: dict = field(default_factory=dict)

    @property
    def model_config(self) -> UNetConfig:
        return UNetConfig.from_dict(self.model)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    def build_model(self) -> UNet:
        net = UNet(self.model_config)
        net.load_state_dict(self.state_dict)
        return net.eval()


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and Paths to types weights_only loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint; use plain types")


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "version": VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()},
        "model": _plain(ckpt.model), "class_names": list(ckpt.class_names),
        "preprocess": _plain(ckpt.preprocess), "mip": int(ckpt.mip),
        "voxel_size": [float(v) for v in ckpt.voxel_size], "patch_size": int(ckpt.patch_size),
        "history": _plain(ckpt.history), "train_config": _plain(ckpt.train_config),
        "lineage": _plain(ckpt.lineage), "epoch": int(ckpt.epoch),
        "optimizer": _plain(ckpt.optimizer), "scheduler": _plain(ckpt.scheduler),
        "best": _plain(ckpt.best),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file: identifies the exact parent checkpoint in a lineage."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safe: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    d = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path} is not a membrane-py checkpoint (no format={FORMAT!r} key)")
    if d.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {d['version']}; this membrane-py reads "
                         f"up to {VERSION}: upgrade membrane-py")
    keys = Checkpoint.__dataclass_fields__
    return Checkpoint(**{k: v for k, v in d.items() if k in keys})
