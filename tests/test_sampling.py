"""Saturated-region sampling: candidate centres vs brute force, exact saturation, alignment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from membrane_py.augment.sampling import (
    Pose,
    SaturatedSampler,
    count_patches,
    cut_patch,
    valid_centres,
)


def _blob_labels(shape=(64, 64), seed=0) -> np.ndarray:
    """An irregular painted region (union of discs) with classes 1/2, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    for _ in range(4):
        cy, cx = rng.integers(12, shape[0] - 12), rng.integers(12, shape[1] - 12)
        cv2.circle(lab, (int(cx), int(cy)), int(rng.integers(8, 16)), 1, -1)
    lab[(lab == 1) & (rng.random(shape) < 0.3)] = 2
    return lab


def _brute_valid(lab: np.ndarray, p: int, angles) -> np.ndarray:
    out = np.zeros(lab.shape, bool)
    for y, x in zip(*np.nonzero(lab), strict=True):
        out[y, x] = any(cut_patch(lab, Pose(int(y), int(x), float(a)), p, True).all()
                        for a in angles)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_candidates_vs_brute_force(seed):
    lab = _blob_labels(seed=seed)
    p, step, margin = 10, 15.0, 1
    angles = np.arange(0, 360, step)
    cand = valid_centres(lab, p, step, margin=margin)
    brute = _brute_valid(lab, p, angles)
    assert cand.any()
    assert not (cand & ~brute).any(), "a candidate centre has no saturated pose on the grid"
    # every centre where a slightly larger patch fits is found (up to rasterisation slack)
    roomy = _brute_valid(lab, p + 2 * margin + 2, angles)
    assert (roomy & ~cand).sum() <= 0.02 * roomy.sum()


def test_axis_aligned_candidates_match_window_test():
    lab = _blob_labels(seed=2)
    p = 8
    cand = valid_centres(lab, p, None, margin=0)
    # symmetric (p+1)^2 window fully annotated, computed independently
    eroded = ndimage.binary_erosion(lab > 0, np.ones((p + 1, p + 1)), border_value=0)
    np.testing.assert_array_equal(cand, eroded)


def test_angle_zero_cut_is_a_plain_crop_and_rotation_is_exact_at_90():
    img = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    np.testing.assert_array_equal(cut_patch(img, Pose(20, 25, 0.0), 8, True), img[16:24, 21:29])
    rot = cut_patch(img, Pose(20, 25, 90.0), 8, True)
    ref = cut_patch(img.astype(np.float32), Pose(20, 25, 90.0), 8, False)
    np.testing.assert_array_equal(rot, ref.astype(np.uint16))


def _poses_coords(pose: Pose, p: int):
    t = np.radians(pose.angle)
    dy, dx = np.mgrid[0:p, 0:p] - p // 2
    ys = pose.cy + np.sin(t) * dx + np.cos(t) * dy
    xs = pose.cx + np.cos(t) * dx - np.sin(t) * dy
    return ys, xs


def test_sparse_painted_region_on_synthetic():
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((1, 384, 384), seed=5)
    yy, xx = np.mgrid[0:384, 0:384]
    painted = ((yy - 150) ** 2 + (xx - 140) ** 2 < 95**2) | ((yy > 250) & (xx > 200) & (xx < 330))
    labels = np.where(painted, s.membranes[0], 0)
    p = 64
    sampler = SaturatedSampler(labels, p, rotate=True)
    assert 0 < sampler.n_valid < painted.sum()  # only some centres are valid
    poses = sampler.sample(60, np.random.default_rng(0))
    assert len(poses) == 60 and len({q.angle for q in poses}) > 50  # any angle, not a grid
    for pose in poses:
        lab = cut_patch(labels, pose, p, nearest=True)
        assert lab.all(), "a sampled patch contains unknown pixels"
        # re-derive from the ground truth at the pose, independently of OpenCV
        ys, xs = _poses_coords(pose, p)
        truth = ndimage.map_coordinates(s.membranes[0], [ys, xs], order=0)
        assert (lab == truth).mean() > 0.995  # rounding ties only
        em = cut_patch(s.em[0], pose, p, nearest=False).astype(np.float64)
        em_ref = ndimage.map_coordinates(s.em[0].astype(np.float64), [ys, xs], order=1)
        assert np.abs(em - em_ref).max() <= 2.0


def test_deterministic_and_counts():
    lab = _blob_labels((96, 96), seed=4)
    a = SaturatedSampler(lab, 12).sample(20, np.random.default_rng(7))
    b = SaturatedSampler(lab, 12).sample(20, np.random.default_rng(7))
    assert a == b
    assert count_patches(np.ones((1024, 512)), 100) == 50
    with pytest.raises(ValueError, match="density"):
        count_patches(lab, 0)


def test_errors_for_empty_and_impossible():
    with pytest.raises(ValueError, match="no annotated pixel"):
        SaturatedSampler(np.zeros((32, 32), np.uint8), 8)
    tiny = np.zeros((32, 32), np.uint8)
    tiny[10:14, 10:14] = 1
    with pytest.raises(ValueError, match="no valid centre"):
        SaturatedSampler(tiny, 16).sample(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="integer classes"):
        SaturatedSampler(np.ones((32, 32), np.float32), 8)
