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

import numpy as np
import torch
from torch import nn

from membrane_py.augment.preprocess import preprocess
from membrane_py.train.checkpoint import Checkpoint

#: patches per forward pass while collecting statistics (same-shape patches only)
BATCH = 8


def has_batch_norm(ck: Checkpoint) -> bool:
    """Whether the checkpoint's network has batch-norm layers (``norm`` ``batch``)."""
    return ck.model_config.norm == "batch"


@torch.no_grad()
def adapt_batch_norm(ck: Checkpoint, em: Iterable[np.ndarray]) -> Checkpoint:
    """``ck`` with the running statistics of its batch-norm layers re-estimated on ``em``
    (uint8 (y, x) sections or patches, any sizes; preprocessed as the checkpoint says): the
    mean over the forward passes of each pass's batch statistics, in fp32 on the CPU. The
    weights stay as they were; the returned checkpoint's digest is that of the new tensors,
    so predictions made with it never mix with the plain network's."""
    if not has_batch_norm(ck):
        raise ValueError("this network has no batch normalisation to adapt (norm "
                         f"{ck.model_config.norm!r}); predict without adapt_bn")
    if ck.model_config.in_channels != 1:
        raise ValueError("batch-norm adaptation feeds single sections; this network reads "
                         f"{ck.model_config.in_channels} (2.5D): predict without adapt_bn")
    net = ck.build_model()
    layers = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the passes
        layer.train()
    pre = ck.preprocess_config
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    passes = 0
    for image in em:
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"batch-norm adaptation takes 8-bit (y, x) EM, got {image.dtype} "
                             f"{image.shape}")
        group = groups.setdefault(image.shape, [])
        group.append(preprocess(image, pre))
        if len(group) == BATCH:
            net(torch.from_numpy(np.stack(group)[:, None]))
            group.clear()
            passes += 1
    for group in (g for g in groups.values() if g):
        net(torch.from_numpy(np.stack(group)[:, None]))
        passes += 1
    if passes == 0:
        raise ValueError("batch-norm adaptation needs sample EM; none was given")
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return replace(ck, state_dict=state, weights_sha256="")
