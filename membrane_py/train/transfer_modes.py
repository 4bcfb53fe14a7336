"""Which weights a fine-tuning run trains, and how fast: the transfer-learning modes.

A mode gives every part of the :class:`~membrane_py.models.unet.UNet` a learning-rate factor;
factor 0 freezes the part. The parts are the U-Net's top-level modules:

- **encoder** = ``down`` (every contracting stage) and ``bridge`` (the bottleneck): everything
  that runs before the first up-sampling, i.e. the first half of the U;
- **decoder** = ``up`` (transposed convolutions), ``up_conv`` (the stages after each skip
  concatenation) and ``head`` (the final 1x1 convolution to class logits, "the last layer").

Modes (mEMbrain's documentation names them; its code only had ``continuous``):

- ``continuous``: every weight at the base learning rate;
- ``last_layer``: only ``head`` trains;
- ``freeze_encoder``: the decoder trains, the encoder is fixed;
- ``leaky``: the encoder trains at ``leaky_ratio`` x the decoder's learning rate.

Frozen parts are excluded from the optimiser (so weight decay cannot move them) and kept in
eval mode while training (no dropout). Their batch-norm layers follow ``frozen_bn``:

- ``pretrained`` (default): they keep the pretrained running statistics, so the features
  the trainable part sees do not move;
- ``adapt``: they normalise with the statistics of the new data (batch statistics while
  training, running statistics re-estimated on the new data for prediction) while their
  learned scale and shift stay frozen ("AdaBN"). On FIB-25 -> ISBI 2012 the pretrained
  statistics are far off (up to 1.6 standard deviations at the bottleneck), yet adapting
  them did not score better there (``bench/transfer.py``, docs/transfer.md), likely because
  the trainable decoder's own batch norms re-normalise the features it receives.

This module imports only torch and the model, so the trainer can use it.
"""

from __future__ import annotations

import torch
from torch import nn

from membrane_py.models.unet import UNet

TRANSFER_MODES = ("continuous", "last_layer", "freeze_encoder", "leaky")
FROZEN_BN = ("pretrained", "adapt")
ENCODER = ("down", "bridge")
DECODER = ("up", "up_conv", "head")
HEAD = "head"
PARTS = ENCODER + DECODER


def lr_factors(mode: str, leaky_ratio: float = 0.1) -> dict[str, float]:
    """Learning-rate factor of every top-level U-Net part under ``mode`` (0 = frozen)."""
    if mode not in TRANSFER_MODES:
        raise ValueError(f"transfer mode must be one of {TRANSFER_MODES}, got {mode!r}")
    if not 0 < leaky_ratio <= 1:
        raise ValueError(f"leaky_ratio must be in (0, 1], got {leaky_ratio}")
    encoder = {"continuous": 1.0, "last_layer": 0.0, "freeze_encoder": 0.0,
               "leaky": leaky_ratio}[mode]
    factors = dict.fromkeys(ENCODER, encoder) | dict.fromkeys(DECODER, 1.0)
    if mode == "last_layer":
        factors.update({part: 0.0 for part in DECODER if part != HEAD})
    return factors


def _part(name: str) -> str:
    """Top-level U-Net part of a parameter or buffer name ('down.0.0.weight' -> 'down')."""
    part = name.split(".", 1)[0]
    if part not in PARTS:
        raise ValueError(f"{name!r} belongs to no known U-Net part {PARTS}; "
                         "update membrane_py.train.transfer_modes for the new architecture")
    return part


def parameter_groups(model: UNet, mode: str, lr: float,
                     leaky_ratio: float = 0.1) -> list[dict]:
    """Freeze the parts with factor 0 (``requires_grad=False``) and return optimiser parameter
    groups for the rest, one per factor, the base learning rate first (so logs show it)."""
    factors = lr_factors(mode, leaky_ratio)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        factor = factors[_part(name)]
        param.requires_grad_(factor > 0)
        if factor > 0:
            groups.setdefault(factor, []).append(param)
    return [{"params": params, "lr": lr * factor}
            for factor, params in sorted(groups.items(), reverse=True)]


def frozen_parts(mode: str) -> tuple[str, ...]:
    """Names of the top-level parts ``mode`` freezes."""
    return tuple(part for part, f in lr_factors(mode).items() if f == 0)


def train_mode(model: UNet, mode: str, frozen_bn: str = "pretrained") -> None:
    """``model.train()``, except frozen parts stay in eval mode (no dropout); their batch-norm
    layers stay in train mode with ``frozen_bn="adapt"`` (statistics of the new data)."""
    if frozen_bn not in FROZEN_BN:
        raise ValueError(f"frozen_bn must be one of {FROZEN_BN}, got {frozen_bn!r}")
    model.train()
    for part in frozen_parts(mode):
        module = getattr(model, part)
        module.eval()
        if frozen_bn == "adapt":
            for layer in module.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.train()


def load_backbone(model: UNet, state_dict: dict[str, torch.Tensor]) -> bool:
    """Load pretrained weights into ``model``; when the class count differs, every weight but
    the ``head`` (which keeps its fresh initialisation). Returns True when the head is new."""
    own = model.state_dict()
    head = {k for k in own if _part(k) == HEAD}
    new_head = any(k in state_dict and state_dict[k].shape != own[k].shape for k in head)
    if not new_head:
        model.load_state_dict(state_dict)
        return False
    kept = {k: v for k, v in state_dict.items() if k not in head}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if set(missing) != head or unexpected:
        raise ValueError(f"pretrained weights do not fit this U-Net: missing {missing}, "
                         f"unexpected {unexpected}")
    return True
