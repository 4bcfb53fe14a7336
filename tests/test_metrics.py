import math

import numpy as np
import pytest

from membrane_py.train.metrics import (
    class_scores,
    membrane_scores,
    per_class_iou_dice,
    pixel_error,
    rand_info_scores,
    segment_membranes,
)

GT = np.array([[1, 1, 2, 2],
               [1, 1, 2, 2]])


def test_pixel_error_and_iou_dice_by_hand():
    gt = np.array([[1, 1, 2, 0]])
    pred = np.array([[1, 2, 2, 1]])
    assert pixel_error(pred, gt) == pytest.approx(1 / 3)  # unknown pixel ignored
    iou, dice = per_class_iou_dice(pred, gt, 2)
    assert iou.tolist() == pytest.approx([1 / 2, 1 / 2])
    assert dice.tolist() == pytest.approx([2 / 3, 2 / 3])
    s = class_scores(pred, gt, 2, ["non-membrane", "membrane"])
    assert s["iou_membrane"] == pytest.approx(0.5)


def test_identical_segmentations_score_perfectly_even_with_other_ids():
    s = rand_info_scores(GT * 7 + 3, GT)
    assert s["v_rand"] == pytest.approx(1.0)
    assert s["v_info"] == pytest.approx(1.0)
    assert s["adapted_rand_error"] == pytest.approx(0.0)
    assert s["vi_split"] == pytest.approx(0.0) and s["vi_merge"] == pytest.approx(0.0)


def test_merge_lowers_merge_scores_only():
    s = rand_info_scores(np.ones_like(GT), GT)
    # p = (1/2, 1/2) in one segment: sum p^2 = 1/2, sum t^2 = 1/2, sum s^2 = 1
    assert s["v_rand_split"] == pytest.approx(1.0)
    assert s["v_rand_merge"] == pytest.approx(0.5)
    assert s["v_rand"] == pytest.approx(2 / 3)
    # I(S;T) = 0 because S has a single segment; H(S) = 0 -> split defined as 1
    assert s["v_info_merge"] == pytest.approx(0.0)
    assert s["vi_merge"] == pytest.approx(1.0)  # bits
    assert s["vi_split"] == pytest.approx(0.0)


def test_split_lowers_split_scores_only():
    seg = np.array([[1, 1, 3, 3],
                    [2, 2, 3, 3]])
    s = rand_info_scores(seg, GT)
    # p = (1/4, 1/4, 1/2): sum p^2 = 3/8, sum t^2 = 1/2, sum s^2 = 3/8
    assert s["v_rand_merge"] == pytest.approx(1.0)
    assert s["v_rand_split"] == pytest.approx(0.75)
    h_s = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert s["v_info_split"] == pytest.approx(math.log(2) / h_s)
    assert s["v_info_merge"] == pytest.approx(1.0)
    # VI in bits: H(S|T) = H(S) - I(S;T) = 1.5 - 1
    assert s["vi_split"] == pytest.approx(0.5)
    assert s["vi_merge"] == pytest.approx(0)


def test_background_of_ground_truth_is_excluded():
    gt = np.array([[1, 1, 0, 2, 2]])
    seg = np.array([[5, 5, 9, 6, 6]])
    seg_other = np.array([[5, 5, 5, 6, 6]])  # differs only where gt is 0
    assert rand_info_scores(seg, gt) == rand_info_scores(seg_other, gt)
    assert rand_info_scores(seg, gt)["v_rand"] == pytest.approx(1.0)


def test_v_rand_agrees_with_skimage_on_larger_images():
    rng = np.random.default_rng(0)
    gt = rng.integers(1, 5, (64, 64))
    seg = np.where(rng.random((64, 64)) < 0.8, gt, rng.integers(1, 5, (64, 64)))
    s = rand_info_scores(seg, gt)
    # scikit-image counts pairs of distinct pixels, ISBI counts ordered pairs with repetition
    assert 1 - s["adapted_rand_error"] == pytest.approx(s["v_rand"], abs=2e-3)


def test_membrane_map_to_instances_and_scores():
    gt = np.ones((20, 20), np.uint8)
    gt[:, 10] = 2  # one vertical membrane, two cells
    prob = np.where(gt == 2, 0.9, 0.1)
    comps = segment_membranes(prob, method="components")
    assert comps.max() == 2 and (comps[:, 10] == 0).all()
    ws = segment_membranes(prob)
    assert (ws > 0).all() and len(np.unique(ws)) == 2
    assert membrane_scores(prob, gt)["v_rand"] == pytest.approx(1.0)
    broken = prob.copy()
    broken[5, 10] = 0.1  # a gap in the membrane merges the two cells
    m = membrane_scores(broken, gt)
    assert m["v_rand_merge"] < 0.6 and m["v_rand_split"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="method"):
        segment_membranes(prob, method="agglomerate")
