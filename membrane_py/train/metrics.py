"""Accuracy metrics for pixel classification and for the instances derived from membranes.

Conventions: ground-truth class maps use 0 = unknown (excluded), 1..K = classes. For the
ISBI-style scores, ground-truth instance maps use 0 = boundary/background (excluded), and the
segmentation under test may use any ids (0 is an ordinary id there).

ISBI 2012 scores (Arganda-Carreras et al. 2015), with p_ij the fraction of foreground pixels
(ground truth > 0) in segment i of the segmentation S and object j of the ground truth T,
s_i = sum_j p_ij and t_j = sum_i p_ij:

- V_rand split = sum p_ij^2 / sum t_j^2 (1 unless S splits a true object),
  V_rand merge = sum p_ij^2 / sum s_i^2 (1 unless S merges true objects),
  V_rand = their harmonic mean (the foreground-restricted Rand F-score; 1 is perfect).
- V_info split = I(S;T) / H(S), V_info merge = I(S;T) / H(T), V_info = harmonic mean.
- VI split = H(S|T), VI merge = H(T|S) in bits (0 is perfect), from scikit-image.
- adapted Rand error = 1 - Rand F-score as scikit-image counts it (pairs of distinct pixels),
  with its precision and recall as scikit-image names them: ``sum p_ij^2`` over the sum of
  squared true object sizes (low when S splits true objects), and over the sum of squared
  segment sizes (low when S merges them).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from skimage.metrics import adapted_rand_error, variation_of_information
from skimage.segmentation import watershed


def pixel_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of known pixels (gt > 0) whose predicted class differs from gt."""
    known = gt > 0
    if not known.any():
        return float("nan")
    return float(np.mean(pred[known] != gt[known]))


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class 1..K, columns = predicted class 1..K, known pixels only."""
    known = gt > 0
    t = gt[known].astype(np.int64) - 1
    p = pred[known].astype(np.int64) - 1
    if t.size and (t.max() >= n_classes or p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"classes must lie in 1..{n_classes}")
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def per_class_iou_dice(pred: np.ndarray, gt: np.ndarray,
                       n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and Dice (index k-1 for class k); NaN for a class absent from both."""
    cm = confusion_matrix(pred, gt, n_classes).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    return iou, dice


def segment_membranes(membrane_prob: np.ndarray, threshold: float = 0.5,
                      method: str = "watershed") -> np.ndarray:
    """2D instance segmentation (uint32) from a membrane probability map in [0, 1].

    Pixels below ``threshold`` are cell interior; their 4-connected components become the
    objects. ``components`` leaves membrane pixels at 0; ``watershed`` grows the objects over
    the membrane probability until they tile the image (what the ISBI scores expect).
    """
    if method not in ("components", "watershed"):
        raise ValueError(f"method must be 'components' or 'watershed', got {method!r}")
    seeds, _ = ndi.label(membrane_prob < threshold)
    seeds = seeds.astype(np.uint32)
    if method == "components" or seeds.max() == 0:
        return seeds
    return watershed(membrane_prob, seeds).astype(np.uint32)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def rand_info_scores(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """ISBI-style V_rand / V_info (with split and merge parts), adapted Rand error and VI
    split/merge of segmentation ``seg`` against instance ground truth ``gt`` (0 excluded)."""
    if seg.shape != gt.shape:
        raise ValueError(f"shape mismatch: segmentation {seg.shape} vs ground truth {gt.shape}")
    fg = gt > 0
    if not fg.any():
        raise ValueError("ground truth has no foreground (all 0): nothing to score")
    _, s_idx = np.unique(seg[fg], return_inverse=True)
    _, t_idx = np.unique(gt[fg], return_inverse=True)
    n = s_idx.size
    p = sparse.coo_matrix((np.full(n, 1.0 / n), (s_idx.ravel(), t_idx.ravel()))).tocsr()
    s = np.asarray(p.sum(axis=1)).ravel()
    t = np.asarray(p.sum(axis=0)).ravel()
    sum_p2 = float(p.multiply(p).sum())
    rand_split, rand_merge = sum_p2 / float(t @ t), sum_p2 / float(s @ s)
    h_s, h_t = _entropy(s), _entropy(t)
    mutual = h_s + h_t - _entropy(p.data)
    info_split = mutual / h_s if h_s > 0 else 1.0
    info_merge = mutual / h_t if h_t > 0 else 1.0
    are, precision, recall = adapted_rand_error(gt, seg, ignore_labels=(0,))
    vi_split, vi_merge = variation_of_information(gt, seg, ignore_labels=(0,))
    return {
        "v_rand": _harmonic(rand_split, rand_merge), "v_rand_split": rand_split,
        "v_rand_merge": rand_merge, "v_info": _harmonic(info_split, info_merge),
        "v_info_split": info_split, "v_info_merge": info_merge,
        "adapted_rand_error": float(are), "rand_precision": float(precision),
        "rand_recall": float(recall), "vi_split": float(vi_split),
        "vi_merge": float(vi_merge),
    }


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def class_scores(pred: np.ndarray, gt: np.ndarray, n_classes: int,
                 class_names: list[str] | None = None) -> dict[str, float]:
    """Pixel error plus per-class IoU and Dice keyed ``iou_<name>`` / ``dice_<name>``."""
    names = class_names or [f"class{k}" for k in range(1, n_classes + 1)]
    iou, dice = per_class_iou_dice(pred, gt, n_classes)
    out = {"pixel_error": pixel_error(pred, gt)}
    for name, i, d in zip(names, iou, dice, strict=True):
        out[f"iou_{name}"] = float(i)
        out[f"dice_{name}"] = float(d)
    return out


def membrane_scores(membrane_prob: np.ndarray, gt_classes: np.ndarray, threshold: float = 0.5,
                    method: str = "watershed") -> dict[str, float]:
    """ISBI-style scores for a membrane map against membrane ground truth (1 = non-membrane,
    2 = membrane, 0 = unknown): the true objects are the 4-connected non-membrane regions."""
    gt_objects, _ = ndi.label(gt_classes == 1)
    seg = segment_membranes(membrane_prob, threshold, method)
    return rand_info_scores(seg, gt_objects)
