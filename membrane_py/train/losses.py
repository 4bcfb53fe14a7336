"""Segmentation losses on logits (N, K, H, W) and labels (N, H, W).

Label 0 means unknown/unannotated and never contributes; classes are 1..K, so class k is
logit channel k-1. Every loss returns a scalar that is 0 (with a gradient path) when a batch
holds no known pixel, so sparse annotation never produces NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LOSSES = ("ce", "weighted_ce", "dice", "ce_dice", "squared", "logistic")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits (N,K,H,W) and labels (N,H,W), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    top = int(labels.max()) if labels.numel() else 0
    if top > logits.shape[1]:
        raise ValueError(f"label {top} exceeds the network's {logits.shape[1]} classes")


def _known_one_hot(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (N,1,H,W) of known pixels, one-hot targets (N,K,H,W)), both float."""
    known = labels > 0
    onehot = F.one_hot((labels - 1).clamp(min=0), logits.shape[1]).permute(0, 3, 1, 2)
    mask = known.unsqueeze(1).to(logits.dtype)
    return mask, onehot.to(logits.dtype) * mask


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                  class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy averaged over known pixels (weighted mean when weights given)."""
    _check(logits, labels)
    if not bool((labels > 0).any()):
        return logits.sum() * 0.0
    w = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, labels.long() - 1, weight=w, ignore_index=-1)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of softmax probabilities vs one-hot labels over known pixels, averaged
    over classes: 1 - (2 sum(p t) + eps) / (sum p + sum t + eps)."""
    _check(logits, labels)
    mask, target = _known_one_hot(logits, labels)
    prob = torch.softmax(logits.float(), dim=1) * mask
    inter = (prob * target).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def ce_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus Dice loss (sharp boundaries from CE, class balance from Dice)."""
    return cross_entropy(logits, labels) + dice_loss(logits, labels)


def squared_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error between softmax probabilities and one-hot labels (UNI-EM 'square'),
    summed over classes and averaged over known pixels."""
    _check(logits, labels)
    mask, target = _known_one_hot(logits, labels)
    n = mask.sum()
    if n == 0:
        return logits.sum() * 0.0
    prob = torch.softmax(logits.float(), dim=1)
    return (((prob - target) ** 2) * mask).sum() / n


def logistic(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class sigmoid log loss vs one-hot labels (UNI-EM 'logistic'), averaged over known
    pixels and classes."""
    _check(logits, labels)
    mask, target = _known_one_hot(logits, labels)
    n = mask.sum() * logits.shape[1]
    if n == 0:
        return logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (bce * mask).sum() / n


def class_weights_from_counts(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get weight 0)."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    w = torch.where(c > 0, c.sum() / c.clamp(min=1), torch.zeros_like(c))
    present = (c > 0).sum().clamp(min=1)
    return (w * present / w.sum()).float()


def make_loss(name: str, class_weights: Sequence[float] | torch.Tensor | None = None) -> LossFn:
    """The loss called ``name`` (one of :data:`LOSSES`); ``weighted_ce`` needs ``class_weights``."""
    if name == "ce":
        return cross_entropy
    if name == "weighted_ce":
        if class_weights is None:
            raise ValueError("weighted_ce needs class_weights (one per class, e.g. from "
                             "class_weights_from_counts)")
        w = torch.as_tensor(class_weights, dtype=torch.float32)
        return lambda logits, labels: cross_entropy(logits, labels, w)
    table = {"dice": dice_loss, "ce_dice": ce_dice, "squared": squared_error, "logistic": logistic}
    if name not in table:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    return table[name]


def affinity_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid log loss of affinity logits (N, C, H, W) against targets (N, C, H, W) of
    0 / 1, with 255 (:data:`membrane_py.augment.affinities.IGNORE`) skipped. Positive and
    negative affinities are weighted to equal shares, so the rare 0s on boundaries (the
    ones that separate objects) are not drowned by the many 1s inside cells."""
    if logits.shape != targets.shape:
        raise ValueError(f"affinity logits {tuple(logits.shape)} and targets "
                         f"{tuple(targets.shape)} differ in shape")
    pos, neg = (targets == 1).float(), (targets == 0).float()
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos + n_neg == 0:
        return logits.sum() * 0.0
    weight = pos / n_pos.clamp(min=1) + neg / n_neg.clamp(min=1)
    weight = weight / ((n_pos > 0).float() + (n_neg > 0).float())
    bce = F.binary_cross_entropy_with_logits(logits.float(), pos, reduction="none")
    return (bce * weight).sum()
