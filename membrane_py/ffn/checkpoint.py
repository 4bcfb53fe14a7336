"""FFN checkpoints: one file loadable with ``torch.load(weights_only=True)``.

Like the U-Net's (:mod:`membrane_py.train.checkpoint`, whose digest, atomic save and
error reporting this reuses), an FFN checkpoint carries everything inference must repeat:
the architecture (:class:`~membrane_py.models.ffn.FFNConfig`), the image normalisation
(mean and standard deviation of the raw grey values), the voxel size trained at, the
training history and config, its lineage (e.g. imported from a TensorFlow checkpoint), and
the optimiser state and step needed to resume training.

:func:`load_ffn` also accepts a TensorFlow checkpoint (its prefix, ``.index`` or data file)
and imports it on the fly with :func:`import_tf_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from membrane_py.atomic import atomic_path
from membrane_py.ffn.tfimport import read_tf_weights
from membrane_py.models.ffn import FFN, FFNConfig
from membrane_py.train.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    _need_file,
    _plain,
    _unreadable,
    weights_sha256,
)

FORMAT = "membrane-py-ffn-checkpoint"
VERSION = 1


@dataclass
class FFNCheckpoint:
    """A loaded FFN checkpoint; ``build_model()`` returns the network in eval mode on CPU."""

    state_dict: dict[str, torch.Tensor]
    model: dict
    image_mean: float = 128.0
    image_stddev: float = 33.0
    voxel_size: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    history: list[dict] = field(default_factory=list)
    train_config: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    step: int = 0
    optimizer: dict | None = None
    weights_sha256: str = ""

    @property
    def config(self) -> FFNConfig:
        return FFNConfig.from_dict(self.model)

    def build_model(self) -> FFN:
        net = FFN(self.config)
        net.load_state_dict(self.state_dict)
        return net.eval()


def save_ffn(path: str | Path, ckpt: FFNCheckpoint) -> Path:
    """Write ``ckpt`` atomically with the digest of its weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    payload = {
        "format": FORMAT, "version": VERSION, DIGEST_KEY: weights_sha256(weights),
        "state_dict": weights, "model": _plain(ckpt.model),
        "image_mean": float(ckpt.image_mean), "image_stddev": float(ckpt.image_stddev),
        "voxel_size": [float(v) for v in ckpt.voxel_size], "history": _plain(ckpt.history),
        "train_config": _plain(ckpt.train_config), "lineage": _plain(ckpt.lineage),
        "step": int(ckpt.step), "optimizer": _plain(ckpt.optimizer),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _is_tf_checkpoint(path: Path) -> bool:
    return (path.name.endswith(".index") or ".data-" in path.name
            or path.with_name(path.name + ".index").is_file())


def import_tf_checkpoint(path: str | Path, config: FFNConfig | None = None, *,
                         image_mean: float = 128.0, image_stddev: float = 33.0
                         ) -> FFNCheckpoint:
    """The TF checkpoint at ``path`` (prefix, ``.index`` or data file) as an FFN checkpoint
    for a network of ``config`` (default: the reference geometry); ``image_mean`` /
    ``image_stddev`` are the normalisation it was trained with (the released FIB-25 model:
    128 and 33)."""
    config = config or FFNConfig()
    state, step = read_tf_weights(path, config)
    return FFNCheckpoint(state_dict=state, model=config.to_dict(), image_mean=image_mean,
                         image_stddev=image_stddev, step=step,
                         lineage={"imported_from": str(path), "format": "tensorflow-bundle"})


def load_ffn(path: str | Path, config: FFNConfig | None = None) -> FFNCheckpoint:
    """An FFN checkpoint written by :func:`save_ffn`, or a TensorFlow checkpoint imported
    with ``config`` (default: the reference geometry). Raises :class:`CheckpointError` for
    files that are damaged, not FFN checkpoints, or do not fit the configured model."""
    path = Path(path)
    if _is_tf_checkpoint(path):
        return import_tf_checkpoint(path, config)
    _need_file(path, "FFN checkpoint")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch, pickle and zip raise a dozen types for bad bytes
        raise _unreadable(path) from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an FFN checkpoint (no format={FORMAT!r} key): "
                              "pass a file written by `membrane ffn train` or `ffn import`")
    if d.get("version", 0) > VERSION:
        raise CheckpointError(f"FFN checkpoint {path} has version {d['version']}; this "
                              f"membrane-py reads up to {VERSION}: upgrade membrane-py")
    digest = weights_sha256(d["state_dict"])
    if d.get(DIGEST_KEY) != digest:
        raise CheckpointError(f"FFN checkpoint {path} is damaged: its weights do not match "
                              "the stored digest; re-copy it or retrain")
    keys = FFNCheckpoint.__dataclass_fields__
    ckpt = FFNCheckpoint(**{k: v for k, v in d.items() if k in keys and k != DIGEST_KEY},
                         weights_sha256=digest)
    if config is not None and ckpt.config != config:
        raise CheckpointError(f"FFN checkpoint {path} holds a {ckpt.config} network, not the "
                              f"configured {config}: drop the model options or fix them")
    return ckpt
