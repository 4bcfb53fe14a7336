"""Augmentations: image and label move together; intensity changes leave labels alone."""

from __future__ import annotations

import numpy as np
import pytest

from membrane_py.augment import transforms as T
from membrane_py.augment.transforms import AugmentConfig, augment_pair


def _pair(seed=0, n=64):
    rng = np.random.default_rng(seed)
    label = (rng.integers(1, 4, (8, 8)).repeat(n // 8, 0).repeat(n // 8, 1)).astype(np.uint16)
    return (label * 60).astype(np.uint8), label


@pytest.mark.parametrize("seed", range(6))
def test_geometric_transforms_keep_alignment(seed):
    image, label = _pair(seed)
    out_i, out_l, applied = augment_pair(image, label, AugmentConfig(), np.random.default_rng(seed))
    np.testing.assert_array_equal(out_i, (out_l * 60).astype(np.uint8))
    ref = np.rot90(label[:, ::-1] if applied.get("flip") else label, applied.get("rot90", 0))
    np.testing.assert_array_equal(out_l, ref)


def test_elastic_moves_label_with_image():
    image, label = _pair(1)
    cfg = AugmentConfig(flip=False, rot90=False, elastic_prob=1.0, elastic_alpha=6.0)
    out_i, out_l, applied = augment_pair(image, label, cfg, np.random.default_rng(3))
    assert applied["elastic"] and not np.array_equal(out_l, label)
    assert set(np.unique(out_l)) <= {1, 2, 3}  # nearest neighbour: no blended classes
    diff = np.abs(out_i.astype(int) - out_l.astype(int) * 60)
    assert (diff == 0).mean() > 0.8  # identical away from class edges
    assert (diff <= 30).mean() > 0.95  # at edges the label is the nearer of the blended values


def test_all_augmentations_change_only_intensity_of_image():
    image, label = _pair(2)
    cfg = AugmentConfig.all_on()
    for seed in range(10):
        out_i, out_l, _ = augment_pair(image, label, cfg, np.random.default_rng(seed))
        assert out_i.dtype == np.uint8 and out_i.shape == image.shape
        assert set(np.unique(out_l)) <= {1, 2, 3}
    a = augment_pair(image, label, cfg, np.random.default_rng(5))
    b = augment_pair(image, label, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    assert {"gaussian_blur", "motion_blur", "elastic", "equalize_random"} <= set(cfg.enabled())


def test_intensity_operators():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    assert T.gaussian_blur(noise, 2.0).std() < noise.std() / 2
    flat = np.full((32, 32), 90, np.uint8)
    np.testing.assert_array_equal(T.motion_blur(flat, 7, 30.0), flat)
    stripes = np.zeros((32, 32), np.uint8)
    stripes[:, ::4] = 255
    horiz = T.motion_blur(stripes, 9, 0.0)  # along x: stripes smear out
    vert = T.motion_blur(stripes, 9, 90.0)  # along y: stripes survive
    assert horiz.std() < vert.std() / 2
    lut_img = T.brightness_contrast_gamma(np.arange(256, dtype=np.uint8)[None], 0.1, 1.0, 1.0)
    assert lut_img[0, 0] == 26 and (np.diff(lut_img[0].astype(int)) >= 0).all()


def test_config_validation_and_roundtrip():
    from membrane_py.augment.patches import PatchJob
    from membrane_py.jobs import SpecError

    cfg = AugmentConfig.all_on()  # round trip inside a job spec, unknown keys refused
    job = PatchJob("i", "l", "oi", "ol", augment=cfg)
    assert PatchJob.from_json(job.to_json()).augment == cfg
    with pytest.raises(SpecError, match="unknown key 'blur'"):
        PatchJob.from_dict({**job.to_dict(), "augment": {"blur": 0.5}})
    with pytest.raises(ValueError, match="equalize"):
        AugmentConfig(equalize="sometimes")
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(blur_prob=2.0)
    with pytest.raises(ValueError, match="same shape"):
        augment_pair(np.zeros((4, 4), np.uint8), np.zeros((4, 5)), cfg, np.random.default_rng())
