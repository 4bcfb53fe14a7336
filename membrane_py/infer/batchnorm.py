"""Batch-norm statistics adapted to the EM being predicted (AdaBN, no labels needed).

A network fine-tuned on a few sections can learn features so narrow that other sections of
the same data set move them off the batch-norm statistics it recorded in training: in
evaluation mode it then breaks membranes that it draws well when normalised by the new
sections' own statistics (docs/training.md, "Why every augmentation"). Re-estimating the
running means and variances of every batch-norm layer on sample EM of the volume being
predicted, with the weights untouched, gives every tile the same, fitting normalisation
(so no seams between tiles, unlike normalising each tile by itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint, model_path

#: patches per forward pass while collecting statistics (same-shape patches only)
BATCH = 8
#: 256^2 EM patches the batch norm adapts to (prediction's ``adapt_bn``, validation)
ADAPT_PATCHES = 32


def has_batch_norm(ck: Checkpoint) -> bool:
    """Whether the checkpoint's network has batch-norm layers (``norm`` ``batch``)."""
    return ck.model_config.norm == "batch"


def batch_norm_layers(net: nn.Module) -> list[nn.BatchNorm2d]:
    """The batch-norm layers of a built network (none: nothing to adapt)."""
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def adapt_network(net: nn.Module, em: Iterable[np.ndarray], pre: PreprocessConfig) -> nn.Module:
    """Re-estimate, in place, the running statistics of ``net``'s batch-norm layers on ``em``
    (uint8 (y, x) sections or patches, any sizes, preprocessed with ``pre``): the mean over
    the forward passes of each pass's batch statistics, on the network's device. Sides are
    cut to the network's multiple of ``2 ** depth`` (:func:`fit_to_multiple`). The weights
    stay as they were; ``net`` is returned in evaluation mode."""
    layers = batch_norm_layers(net)
    if not layers:
        raise ValueError("this network has no batch normalisation to adapt; predict "
                         "without adapt_bn")
    net.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the passes
        layer.train()
    device = next(net.parameters()).device
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    passes = 0

    def forward(group: list[np.ndarray]) -> None:
        net(torch.from_numpy(np.stack(group)[:, None]).to(device))

    for image in em:
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"batch-norm adaptation takes 8-bit (y, x) EM, got {image.dtype} "
                             f"{image.shape}")
        image = fit_to_multiple(image, net.config.multiple)
        group = groups.setdefault(image.shape, [])
        group.append(preprocess(image, pre))
        if len(group) == BATCH:
            forward(group)
            group.clear()
            passes += 1
    for group in (g for g in groups.values() if g):
        forward(group)
        passes += 1
    if passes == 0:
        raise ValueError("batch-norm adaptation needs sample EM; none was given")
    for layer in layers:
        layer.momentum = 0.1  # nn.BatchNorm2d's default, should the network train again
    return net.eval()


def fit_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """``image`` cut at the bottom and right to the largest multiple of ``multiple`` (a
    network's ``2 ** depth``), or mirrored up to ``multiple`` where a side is shorter: only
    real EM goes into the statistics (FIB-25 sections of 250^2 become 240^2 for depth 4)."""
    h, w = (max(multiple, n - n % multiple) for n in image.shape)
    image = image[:h, :w]
    pad = ((0, h - image.shape[0]), (0, w - image.shape[1]))
    return np.pad(image, pad, mode="symmetric") if any(p for _, p in pad) else image


def adapt_batch_norm(ck: Checkpoint, em: Iterable[np.ndarray]) -> Checkpoint:
    """``ck`` with the running statistics of its batch-norm layers re-estimated on ``em``
    (:func:`adapt_network`, fp32 on the CPU, preprocessed as the checkpoint says). The
    returned checkpoint's digest is that of the new tensors, so predictions made with it
    never mix with the plain network's."""
    if not has_batch_norm(ck):
        raise ValueError("this network has no batch normalisation to adapt (norm "
                         f"{ck.model_config.norm!r}); predict without adapt_bn")
    if ck.model_config.in_channels != 1:
        raise ValueError("batch-norm adaptation feeds single sections; this network reads "
                         f"{ck.model_config.in_channels} (2.5D): predict without adapt_bn")
    net = adapt_network(ck.build_model(), em, ck.preprocess_config)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return replace(ck, state_dict=state, weights_sha256="")


def crops(images: list[np.ndarray], n: int = 32, side: int = 256,
          seed: int = 0) -> list[np.ndarray]:
    """``n`` random ``side``^2 crops (whole images when smaller) of ``images``, the sample
    a network adapts to when it validates or predicts them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        sy, sx = min(side, im.shape[0]), min(side, im.shape[1])
        y, x = rng.integers(im.shape[0] - sy + 1), rng.integers(im.shape[1] - sx + 1)
        out.append(im[y:y + sy, x:x + sx])
    return out


def settle_adapt_bn(asked: bool | None, model: str | Path | Checkpoint) -> bool:
    """Whether to adapt ``model``'s batch norm: ``asked`` when given, else the network's own
    choice (:attr:`Checkpoint.adapt_bn <membrane_py.train.checkpoint.Checkpoint.adapt_bn>`,
    set when whole-section validation scored it better adapted); never for ONNX models,
    whose batch norm is folded into the convolutions."""
    if asked is not None:
        return asked
    if isinstance(model, Checkpoint):
        return model.adapt_bn
    path = model_path(model)
    return path.suffix.lower() != ".onnx" and load_checkpoint(path).adapt_bn
