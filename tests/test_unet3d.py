"""The 3D U-Net (arch unet3d): shapes, cube samples, training and cube-wise prediction."""

import numpy as np
import pytest
import torch

from membrane_py.augment.affinities import affinities
from membrane_py.augment.dataset import AffinityCubeDataset
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.models import UNet3D, UNetConfig, build_model


def test_unet3d_forward_shapes_and_bad_sides():
    net = build_model({"arch": "unet3d", "in_channels": 1, "n_classes": 3, "depth": 2,
                       "base_filters": 4})
    assert isinstance(net, UNet3D)
    out = net(torch.zeros(2, 1, 8, 12, 16))
    assert out.shape == (2, 3, 8, 12, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 1, 6, 8, 8))
    with pytest.raises(ValueError, match="arch 'unet3d'"):
        UNet3D(UNetConfig(arch="unet"))


def test_cube_dataset_matches_the_labels_under_flips():
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 4, (20, 20, 20))
    em = (labels * 60).astype(np.uint8)  # the EM shows the labels, so flips must agree
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 3, 0)]
    ds = AffinityCubeDataset(em, labels, 8, 32, PreprocessConfig(mean=0.0, std=1.0),
                             offsets=offsets)
    for i in range(32):
        image, target = ds[i]
        assert image.shape == (1, 8, 8, 8) and target.shape == (4, 8, 8, 8)
        # recompute from what the image shows (margin 3 reaches outside: check the core)
        shown = np.rint(image[0] * 255 / 60).astype(int)
        expect = affinities(shown, offsets)
        known = expect != 255
        np.testing.assert_array_equal(target[known], expect[known])
        assert (target != 255).all()  # the margin makes every edge known
    with pytest.raises(ValueError, match="do not fit"):
        AffinityCubeDataset(em, labels, 16, 4, PreprocessConfig(), offsets=offsets)


def test_unet3d_trains_with_falling_loss_and_predicts_cubes(tmp_path):
    import tifffile

    from membrane_py.infer.cubes import predict_cubes
    from membrane_py.infer.engine import load_predictor
    from membrane_py.train.checkpoint import load_checkpoint
    from membrane_py.train.config import TrainJob
    from membrane_py.train.trainer import run_training
    from membrane_py.volumes.synthetic import make_synthetic

    torch.manual_seed(0)
    s = make_synthetic((24, 40, 40), seed=2)
    tifffile.imwrite(tmp_path / "em.tif", s.em, photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", s.instances.astype(np.uint32),
                     photometric="minisblack")
    cfg = TrainJob(image_dir=str(tmp_path / "em.tif"), label_dir=str(tmp_path / "gt.tif"),
                   out_dir=str(tmp_path / "runs"), target="affinities", arch="unet3d",
                   patch_size=16, patches_per_epoch=4, val_fraction=0.0, depth=2,
                   base_filters=4, epochs=8, batch_size=4, lr=3e-3, device="cpu",
                   augment=None)
    result = run_training(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 8 and losses[-1] < losses[0]
    ck = load_checkpoint(result.best_path)
    assert ck.model_config.arch == "unet3d" and ck.model_config.in_channels == 1
    em = s.em[:16, :20, :24]
    out = predict_cubes(ck, em, cube=8, margin=4, device="cpu")
    assert out.shape == (3, 16, 20, 24) and out.min() >= 0 and out.max() <= 1
    whole = predict_cubes(ck, em, cube=24, margin=4, device="cpu")
    assert np.abs(out - whole).mean() < 0.05  # cube borders barely show
    with pytest.raises(ValueError, match="predict_cubes"):
        load_predictor(result.best_path, device="cpu")
    with pytest.raises(ValueError, match="unet3d"):
        TrainJob(arch="unet3d", target="affinities", context=1)
