"""One-file checkpoints loadable with ``torch.load(weights_only=True)``.

A checkpoint holds only plain Python types and tensors: the weights, the architecture config,
class names, the preprocessing prediction must repeat, the mip / voxel size / patch size
trained at, the training history and config, lineage (what it was fine-tuned from), the
membrane threshold chosen by whole-section validation and whether prediction adapts the batch
norm by default, and the optimizer / scheduler state and epoch needed to resume.

Integrity: :func:`save_checkpoint` stores ``weights_sha256``, the SHA-256 of a canonical byte
serialisation of the weights (:func:`tensors_sha256`), and :func:`load_checkpoint` checks it,
so a file damaged in transfer or storage fails loudly instead of predicting garbage.
Checkpoints written before the digest existed load unchecked. Every reason a file cannot be
used becomes one :class:`CheckpointError` whose message names the file and the fix.

The name ``starter`` (:data:`STARTER`) stands for the membrane model shipped inside the
package (recipe: bench/train_starter.py) wherever a checkpoint path is taken;
:func:`model_path` turns it into the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from membrane_py.atomic import atomic_path
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.models import UNet, UNetConfig, build_model

FORMAT = "membrane-py-checkpoint"
VERSION = 1
DIGEST_KEY = "weights_sha256"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
#: the model name that means the starter membrane model shipped with the package
STARTER = "starter"


def starter_path() -> Path:
    """The shipped starter membrane model (package data, found from any install)."""
    return Path(str(files("membrane_py.models") / "weights" / "membranes_starter.pt"))


def model_path(model: str | Path) -> Path:
    """The file of a model argument: :data:`STARTER` is the shipped starter model, anything
    else a path. The one place that name is resolved."""
    return starter_path() if str(model) == STARTER else Path(model)


class CheckpointError(ValueError):
    """A model file that cannot be used: damaged (weights differ from the stored digest,
    truncated) or not a membrane-py model at all. The message is one line naming the file
    and the fix, so a CLI can print it as is."""


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
    #: membrane threshold chosen by whole-section validation (the best mean V_rand of
    #: :mod:`membrane_py.train.section_validation`); None: not validated on whole sections
    threshold: float | None = None
    #: whole-section validation scored this network better with its batch norm adapted to
    #: the sections (:func:`membrane_py.train.section_validation.best_section_scores`), so
    #: prediction adapts it to the EM it predicts unless told otherwise
    adapt_bn: bool = False
    weights_sha256: str = ""  # filled by load_checkpoint (see the module docstring)

    def digest(self) -> str:
        """The weights' SHA-256: as verified when loaded, else computed now."""
        return self.weights_sha256 or weights_sha256(self.state_dict)

    @property
    def model_config(self) -> UNetConfig:
        return UNetConfig.from_dict(self.model)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def target(self) -> str:
        """``classes`` (softmax over classes) or ``affinities`` (a sigmoid per channel)."""
        return self.train_config.get("target", "classes")

    @property
    def context(self) -> int:
        """Neighbouring sections on each side fed as extra input channels (2.5D)."""
        return (self.model_config.in_channels - 1) // 2

    def build_model(self) -> UNet:
        net = build_model(self.model_config)
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


def tensors_sha256(tensors: Iterable[tuple[str, str, tuple[int, ...], memoryview]]) -> str:
    """SHA-256 of named tensors given as (name, dtype, shape, raw bytes), in name order.

    Each tensor contributes a header line ``name, dtype, shape, byte count`` and then its
    bytes, so neither a renamed, reshaped or retyped tensor nor shifted bytes go unnoticed.
    Shared by checkpoints and exported ONNX models."""
    digest = hashlib.sha256()
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        digest.update(f"{name}\0{dtype}\0{list(shape)}\0{data.nbytes}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The digest :func:`save_checkpoint` stores: :func:`tensors_sha256` of the weights."""
    def raw(t: torch.Tensor) -> memoryview:
        flat = t.detach().cpu().contiguous().reshape(-1)
        return memoryview(flat.view(torch.uint8).numpy())

    return tensors_sha256((k, str(v.dtype).removeprefix("torch."), tuple(v.shape), raw(v))
                          for k, v in state_dict.items())


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    payload = {
        "format": FORMAT, "version": VERSION, DIGEST_KEY: weights_sha256(weights),
        "state_dict": weights,
        "model": _plain(ckpt.model), "class_names": list(ckpt.class_names),
        "preprocess": _plain(ckpt.preprocess), "mip": int(ckpt.mip),
        "voxel_size": [float(v) for v in ckpt.voxel_size], "patch_size": int(ckpt.patch_size),
        "history": _plain(ckpt.history), "train_config": _plain(ckpt.train_config),
        "lineage": _plain(ckpt.lineage), "epoch": int(ckpt.epoch),
        "optimizer": _plain(ckpt.optimizer), "scheduler": _plain(ckpt.scheduler),
        "best": _plain(ckpt.best),
        "threshold": None if ckpt.threshold is None else float(ckpt.threshold),
        "adapt_bn": bool(ckpt.adapt_bn),
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


def _need_file(path: Path, what: str) -> None:
    """Raise one line when ``path`` is missing or a folder (a run folder given for the
    checkpoint in it is a common slip)."""
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a checkpoint file: pass the "
                                "checkpoint file in it (.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")


def _unreadable(path: Path) -> CheckpointError:
    """Why ``torch.load`` could not read ``path``, judged from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        why = "is empty (an interrupted copy or save?): re-copy it or retrain"
    elif path.suffix.lower() == ".onnx":
        why = ("is an ONNX model, not a checkpoint: pass the .pt checkpoint it was exported "
               "from (prediction also takes the .onnx with backend onnx)")
    elif head.startswith(_ZIP_MAGIC):
        why = "is truncated or damaged: re-copy it or retrain"
    elif head.startswith(_PICKLE_MAGIC):
        why = ("is a Python pickle holding objects other than tensors and plain data, not a "
               "membrane-py checkpoint: pass a .pt file saved by membrane-py")
    elif _is_text(head):
        why = "is a text file, not a checkpoint: pass a .pt file saved by membrane-py"
    else:
        why = "is not a membrane-py checkpoint (unrecognised content): pass a .pt file saved " \
              "by membrane-py"
    return CheckpointError(f"checkpoint {path} {why}")


def _is_text(head: bytes) -> bool:
    """True when ``head`` decodes as UTF-8 made only of printable characters and spaces."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safe: ``weights_only=True``) and
    check its weights against the stored digest; ``path`` may be :data:`STARTER`. Raises
    :class:`CheckpointError` for any file that is damaged or not a membrane-py checkpoint."""
    path = model_path(path)
    _need_file(path, "checkpoint")
    try:
        d = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch, pickle and zip raise a dozen types for bad bytes
        raise _unreadable(path) from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is a PyTorch file but not a membrane-py "
                              f"checkpoint (no format={FORMAT!r} key): pass a .pt file saved "
                              "by membrane-py")
    if d.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has version {d['version']}; this membrane-py "
                              f"reads up to {VERSION}: upgrade membrane-py")
    stored, digest = d.get(DIGEST_KEY), weights_sha256(d["state_dict"])
    if stored is not None and stored != digest:
        raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match the "
                              "digest stored when it was saved; re-copy it or retrain")
    keys = Checkpoint.__dataclass_fields__
    return Checkpoint(**{k: v for k, v in d.items() if k in keys and k != DIGEST_KEY},
                      weights_sha256=digest)
