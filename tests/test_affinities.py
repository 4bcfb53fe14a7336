"""Affinity targets, 2.5D affinity training and prediction, and affinity agglomeration."""

import json

import numpy as np
import pytest
import torch

from membrane_py.augment.affinities import IGNORE, affinities
from membrane_py.augment.dataset import AffinityPatchDataset
from membrane_py.augment.labels import apply_mapping
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.geometry import Box
from membrane_py.segment import (
    AgglomerationKnobs,
    agglomerate_affinities,
    boundary_affinities,
    relabel,
    segment_affinities,
)
from membrane_py.train.losses import affinity_bce


def test_affinities_hand_worked():
    # two sections of 2 x 3; id 0 is boundary
    labels = np.array([[[1, 1, 2],
                        [1, 0, 2]],
                       [[1, 2, 2],
                        [3, 3, 2]]])
    a = affinities(labels)
    assert a.shape == (3, 2, 2, 3) and a.dtype == np.uint8
    x = IGNORE
    # z: section 1 against section 0, voxel by voxel; section 0 has no neighbour
    np.testing.assert_array_equal(a[0, 0], [[x, x, x], [x, x, x]])
    np.testing.assert_array_equal(a[0, 1], [[1, 0, 1], [0, 0, 1]])
    # y: row 1 against row 0
    np.testing.assert_array_equal(a[1, 0], [[x, x, x], [1, 0, 1]])
    np.testing.assert_array_equal(a[1, 1], [[x, x, x], [0, 0, 1]])
    # x: column c against column c - 1
    np.testing.assert_array_equal(a[2, 0], [[x, 1, 0], [x, 0, 0]])
    np.testing.assert_array_equal(a[2, 1], [[x, 0, 1], [x, 1, 0]])


def test_long_range_affinity_and_bad_offsets():
    labels = np.array([[[1, 1, 2, 2, 1]]])
    np.testing.assert_array_equal(affinities(labels, [(0, 0, 2)])[0, 0, 0],
                                  [IGNORE, IGNORE, 0, 0, 0])
    np.testing.assert_array_equal(affinities(labels, [(0, 0, 4)])[0, 0, 0, 4], 1)
    with pytest.raises(ValueError, match="offsets"):
        affinities(labels, [(0, -1, 0)])


def test_apply_mapping_keeps_unmapped_ids():
    fragments = np.array([[0, 1, 2, 3, 7]])
    bodies = apply_mapping(fragments, np.array([[1, 10], [2, 10], [7, 5]]))
    np.testing.assert_array_equal(bodies, [[0, 10, 10, 3, 5]])


def test_boundary_affinities_hand_worked():
    p = np.array([[[0.1, 0.8, 0.3]]], np.float32)
    a = boundary_affinities(p)
    np.testing.assert_allclose(a[2, 0, 0], [0.9, 0.2, 0.2])  # x: 1 - max(p, left)
    np.testing.assert_allclose(a[0, 0, 0], [0.9, 0.2, 0.7])  # z: no neighbour, 1 - p


def test_affinity_patch_dataset_matches_labels():
    rng = np.random.default_rng(0)
    em = rng.integers(0, 255, (6, 40, 40), dtype=np.uint8)
    labels = np.repeat(np.arange(40)[None, :, None] // 10, 6, 0) * np.ones((1, 1, 40), int) + 1
    ds = AffinityPatchDataset(em, labels, 32, 5, PreprocessConfig(), context=2, augment=False)
    image, target = ds[3]
    assert image.shape == (5, 32, 32) and image.dtype == np.float32
    assert target.shape == (3, 32, 32) and target.dtype == np.uint8
    assert np.all(target[0] == 1)  # the same stripes in every section: z affinities are 1
    assert set(np.unique(target[1, 1:])) == {0, 1}  # y: stripe edges are 0
    assert np.all(target[1, 0] == IGNORE) and np.all(target[2, :, 0] == IGNORE)
    assert np.all(target[2, :, 1:] == 1)  # stripes run along x


def test_affinity_loss_skips_ignored_and_balances():
    logits = torch.tensor([[[[5.0, -5.0, 0.0]]]])
    good = affinity_bce(logits, torch.tensor([[[[1, 0, IGNORE]]]], dtype=torch.uint8))
    bad = affinity_bce(logits, torch.tensor([[[[0, 1, IGNORE]]]], dtype=torch.uint8))
    assert float(good) < 0.01 < 4 < float(bad)
    none = affinity_bce(logits, torch.full((1, 1, 1, 3), IGNORE, dtype=torch.uint8))
    assert float(none) == 0.0


def blocks_with_contacts(contacts: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Blocks side by side along x, 6 voxels wide, affinity 1 inside each block and
    ``contacts[i]`` across the face between block i and i + 1; the blocks as fragments."""
    n = len(contacts) + 1
    fragments = np.repeat(np.arange(1, n + 1), 6)[None, None, :] * np.ones((4, 8, 1), int)
    affs = np.ones((3, *fragments.shape), np.float32)
    for i, value in enumerate(contacts):
        affs[2, :, :, 6 * (i + 1)] = value  # x affinity of the first voxel of block i + 1
    return affs, fragments


def groups(seg: np.ndarray) -> list[set[int]]:
    """Which of the 6-voxel blocks along x share an object."""
    ids = seg[0, 0, ::6]
    return sorted(({i + 1 for i in np.flatnonzero(ids == v)} for v in np.unique(ids)), key=min)


def test_agglomeration_merges_exactly_below_threshold():
    # contact scores (1 - affinity): 1|2 0.1, 2|3 0.4, 3|4 0.8
    affs, fragments = blocks_with_contacts([0.9, 0.6, 0.2])
    knobs = AgglomerationKnobs(min_size=0)
    segs = list(agglomerate_affinities(affs, [0.05, 0.3, 0.5, 0.9], knobs, fragments))
    assert groups(segs[0]) == [{1}, {2}, {3}, {4}]
    assert groups(segs[1]) == [{1, 2}, {3}, {4}]
    assert groups(segs[2]) == [{1, 2, 3}, {4}]
    assert groups(segs[3]) == [{1, 2, 3, 4}]
    assert all(s.dtype == np.uint32 and s.min() == 1 for s in segs)
    assert fragments.max() == 4  # the caller's fragments are left alone


def test_mean_and_quantile_scoring_differ_on_a_leaky_contact():
    affs, fragments = blocks_with_contacts([0.1])
    affs[2, :1, :, 6] = 1.0  # one of four sections leaks: mean 0.325, median 0.1
    mean = next(agglomerate_affinities(affs, [0.7], AgglomerationKnobs(min_size=0), fragments))
    median = next(agglomerate_affinities(
        affs, [0.7], AgglomerationKnobs(scoring="quantile", quantile=50, min_size=0), fragments))
    assert groups(mean) == [{1, 2}] and groups(median) == [{1}, {2}]


def test_segment_affinities_from_a_label_volume():
    labels = np.zeros((12, 40, 40), np.int64)
    labels[:, :19, :] = 1
    labels[:, 21:, :19] = 2
    labels[:, 21:, 21:] = 3
    labels[:6, :19, 21:] = 4  # a fourth object, cut from 1 by boundary planes (id 0)
    labels[:7, :19, 20] = 0
    labels[6, :19, 20:] = 0
    affs = affinities(labels).astype(np.float32)
    affs[affs == IGNORE] = 1
    rng = np.random.default_rng(1)
    noisy = np.clip(0.1 + 0.8 * affs + rng.normal(0, 0.05, affs.shape), 0, 1).astype(np.float32)
    seg = segment_affinities(noisy, AgglomerationKnobs(threshold=0.4, min_size=50))
    inside = labels > 0
    pairs = np.unique(np.stack([labels[inside], seg[inside]]), axis=1)
    assert pairs.shape[1] == 4 and len(np.unique(pairs[1])) == 4  # one object per body


def test_knobs_reject_bad_values():
    for bad in ({"threshold": 1.5}, {"scoring": "max"}, {"quantile": 33},
                {"fragmenter": "random"}):
        with pytest.raises(ValueError):
            AgglomerationKnobs(**bad)


def test_relabel_numbers_consecutively_and_drops_small():
    labels = np.array([[5, 5, 5, 900, 0, 70000, 70000, 70000]])
    out = relabel(labels, min_size=2)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out[0] > 0, [1, 1, 1, 0, 0, 1, 1, 1])
    assert sorted(np.unique(out[out > 0])) == [1, 2]


def test_instances_job_affinity_modes_and_cli(tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from membrane_py.cli import app
    from membrane_py.edit.instances import InstanceJob, run_instances
    from membrane_py.train.metrics import rand_info_scores
    from membrane_py.volumes.open import open_volume
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((8, 128, 128), seed=4)
    gt = s.instances.astype(np.int64)
    affs = affinities(gt)
    paths = []
    for name, channel in zip("zyx", affs, strict=True):
        paths.append(str(tmp_path / f"aff_{name}.tif"))
        code = np.where(channel == IGNORE, 255, 1 + channel.astype(np.uint16) * 254)
        tifffile.imwrite(paths[-1], code.astype(np.uint8), photometric="minisblack")
    job = InstanceJob(paths, str(tmp_path / "a.zarr"), mode="affinities",
                      affinity=AgglomerationKnobs(threshold=0.3, min_size=20))
    assert InstanceJob.from_dict(json.loads(job.to_json())) == job
    result = run_instances(job)
    seg = open_volume(result.path, labels=True)
    seg = seg.read(seg.full_box if hasattr(seg, "full_box") else Box.full(seg.shape))
    assert rand_info_scores(seg, gt)["adapted_rand_error"] < 0.1  # thin objects may merge
    with pytest.raises(ValueError, match="three volumes"):
        InstanceJob(paths[:2], "x.zarr", mode="affinities")
    out = CliRunner().invoke(app, ["instances", *paths, "-o", str(tmp_path / "cli.tif"),
                                   "--mode", "affinities", "--merge-threshold", "0.3"])
    assert out.exit_code == 0, out.output
    cli = tifffile.imread(tmp_path / "cli.tif")
    assert cli.max() == int(seg.max())
    bad = CliRunner().invoke(app, ["instances", *paths, "-o", "x.tif", "--mode", "affinities",
                                   "--merge-threshold", "2"])
    assert bad.exit_code == 2 and "threshold" in bad.output


def test_many_objects_keep_vast_ids_with_a_remap_warning(tmp_path, vast_server):
    import tifffile

    from membrane_py.edit.paint import PaintJob, run_paint
    from membrane_py.predict.job import RegionSpec
    from membrane_py.vastapi.client import VastClient

    # one-voxel cells on a 2-voxel grid, apart in z too: 131 072 objects, ids past 65535
    grid = np.arange(256) % 2 == 0
    cells = np.broadcast_to(grid[:, None] & grid[None, :], (8, 256, 256))
    fragments = np.zeros(cells.shape, np.int64)
    fragments[cells] = np.arange(1, cells.sum() + 1)
    affs = affinities(fragments).astype(np.float32)
    affs[affs == IGNORE] = 0
    seg = next(agglomerate_affinities(affs, [0.5], AgglomerationKnobs(min_size=0), fragments))
    assert seg.max() == 8 * 128 * 128 > 0xFFFF
    tifffile.imwrite(tmp_path / "ids.tif", seg, photometric="minisblack")
    events = []
    vast = f"vast://{vast_server.host}:{vast_server.port}"
    result = run_paint(PaintJob(str(tmp_path / "ids.tif"), vast=vast, mode="labels",
                                region=RegionSpec("box", [0, 63, 0, 63, 7, 7]), save=False),
                       events.append)
    assert max(result.mapping.values()) <= 0xFFFF
    assert any(e.kind == "warning" and "16-bit" in e.message for e in events)
    with VastClient(vast_server.host, vast_server.port) as client:
        client.set_selected_api_layer(result.layer)
        painted = client.get_seg_image(Box(7, 8, 0, 64, 0, 64))[0]
    assert seg[7, :64, :64].min() == 0 and seg[7, :64, :64].max() > 0xFFFF
    assert painted.max() <= 0xFFFF and len(np.unique(painted[painted > 0])) == 32 * 32
    np.testing.assert_array_equal(painted > 0, seg[7, :64, :64] > 0)


def test_affinity_training_through_run_training_and_engine(tmp_path):
    import tifffile

    from membrane_py.infer.engine import load_predictor
    from membrane_py.train.checkpoint import load_checkpoint
    from membrane_py.train.config import TrainJob
    from membrane_py.train.trainer import run_training
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((6, 64, 64), seed=1)
    tifffile.imwrite(tmp_path / "em.tif", s.em, photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", s.instances.astype(np.uint32),
                     photometric="minisblack")
    cfg = TrainJob(image_dir=str(tmp_path / "em.tif"), label_dir=str(tmp_path / "gt.tif"),
                   out_dir=str(tmp_path / "runs"), target="affinities", context=1,
                   patch_size=32, patches_per_epoch=8, val_patches=4, val_fraction=0.34,
                   depth=2, base_filters=4, epochs=2, batch_size=4, device="cpu")
    result = run_training(cfg)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["val_loss"])
    ck = load_checkpoint(result.best_path)
    assert (ck.target, ck.context, ck.model_config.in_channels) == ("affinities", 1, 3)
    assert ck.class_names == ["affinity_1_0_0", "affinity_0_1_0", "affinity_0_0_1"]
    predictor = load_predictor(result.best_path, device="cpu", tile=32, margin=8)
    out = predictor.predict(s.em[:3])
    assert out.shape == (3, 3, 64, 64) and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out.sum(axis=1), 1)  # independent sigmoids, not a softmax
    # the neighbouring sections matter: changing section 0 changes section 1's prediction
    changed = s.em[:3].copy()
    changed[0] = 255 - changed[0]
    assert not np.allclose(predictor.predict(changed)[1], out[1])
    with pytest.raises(ValueError, match="backend='torch'"):
        load_predictor(result.best_path, backend="onnx")


def test_gt_membrane_applies_a_fragment_to_body_mapping(tmp_path):
    import h5py
    import tifffile
    from typer.testing import CliRunner

    from membrane_py.augment.groundtruth import GtJob, run_gt
    from membrane_py.augment.labels import read_label_image
    from membrane_py.cli import app

    fragments = np.zeros((1, 6, 9), np.uint32)
    fragments[0, :, :3], fragments[0, :, 3:6], fragments[0, :, 6:] = 1, 2, 3
    tifffile.imwrite(tmp_path / "frag.tif", fragments, photometric="minisblack")
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        f["transforms"] = np.array([[1, 10], [2, 10], [3, 20]])
    run_gt(GtJob("membrane", str(tmp_path / "frag.tif"), str(tmp_path / "out"), thickness=2,
                 mapping=f"{tmp_path / 'gt.h5'}:transforms"))
    (png,) = sorted((tmp_path / "out").glob("*.png"))
    cols = np.flatnonzero((read_label_image(png) == 2).any(axis=0))
    assert cols.size and cols.min() >= 5 and cols.max() <= 6  # only the body boundary 10 | 20
    plain = GtJob("membrane", "x", "y", thickness=2).convert(fragments[0])
    assert (plain[:, 2:4] == 2).any()  # without the mapping fragments 1 | 2 are cut apart
    bad = CliRunner().invoke(app, ["gt", "membrane", str(tmp_path / "frag.tif"),
                                   str(tmp_path / "o2"), "--mapping",
                                   f"{tmp_path / 'gt.h5'}:nothere"])
    assert bad.exit_code == 2 and "no dataset 'nothere'" in bad.output


def test_paint_agglomerate_into_vast(tmp_path, vast_server):
    import tifffile

    from membrane_py.edit.paint import PaintJob, run_paint
    from membrane_py.predict.job import RegionSpec
    from membrane_py.segment import membrane_map_from_labels, to_probability
    from membrane_py.vastapi.client import VastClient
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((8, 256, 256), seed=0)  # the volume the server serves
    prob_u8 = (1 + membrane_map_from_labels(s.instances, seed=3) * 254).astype(np.uint8)
    tifffile.imwrite(tmp_path / "prob.tif", prob_u8, photometric="minisblack")
    knobs = AgglomerationKnobs(threshold=0.4)
    result = run_paint(PaintJob(str(tmp_path / "prob.tif"),
                                vast=f"vast://{vast_server.host}:{vast_server.port}",
                                mode="agglomerate", affinity=knobs, save=False,
                                region=RegionSpec("box", [0, 127, 0, 127, 2, 5])))
    expected = segment_affinities(boundary_affinities(to_probability(prob_u8[2:6, :128, :128])),
                                  knobs)
    with VastClient(vast_server.host, vast_server.port) as client:
        client.set_selected_api_layer(result.layer)
        painted = client.get_seg_image(Box(2, 6, 0, 128, 0, 128))
    assert expected.max() > 3
    pairs = np.unique(np.stack([painted.ravel(), expected.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(expected))  # the same partition, renumbered
    np.testing.assert_array_equal(painted > 0, expected > 0)


def test_auto_mode_follows_the_voxel_size(tmp_path):
    import tifffile

    from membrane_py.edit.instances import (
        ANISOTROPIC_MODE,
        ISOTROPIC_MODE,
        InstanceJob,
        auto_mode,
        is_anisotropic,
        run_instances,
    )
    from membrane_py.segment import membrane_map_from_labels
    from membrane_py.volumes.synthetic import make_synthetic

    assert auto_mode((10, 10, 10)) == auto_mode((1, 1, 1)) == ISOTROPIC_MODE
    assert auto_mode((50, 4, 4)) == ANISOTROPIC_MODE
    assert not is_anisotropic((10, 10, 10)) and is_anisotropic((50, 4, 4))
    assert not is_anisotropic((50, 4, 4), mip=3)  # 32 nm pixels at mip 3
    s = make_synthetic((4, 96, 96), seed=5)
    prob = (1 + membrane_map_from_labels(s.instances, seed=1) * 254).astype(np.uint8)
    tifffile.imwrite(tmp_path / "prob.tif", prob, photometric="minisblack")
    events = []
    result = run_instances(InstanceJob([str(tmp_path / "prob.tif")], str(tmp_path / "o.tif")),
                           events.append)
    assert result.mode == ISOTROPIC_MODE and result.n_objects > 3  # a TIFF knows no voxel size
    assert any(e.kind == "log" and ISOTROPIC_MODE in e.message for e in events)


def test_train_job_checks_target_and_context():
    from membrane_py.train.config import TrainJob

    job = TrainJob(target="affinities", context=2, offsets=[[1, 0, 0], [0, 1, 0], [0, 0, 9]])
    assert TrainJob.from_dict(json.loads(job.to_json())) == job
    assert job.with_architecture("cpu").model_config(3).in_channels == 5
    for bad, why in (({"context": 1}, "needs target affinities"), ({"target": "boxes"}, "target"),
                     ({"target": "affinities", "offsets": [[0, 0, 0], [1, 0, 0]]}, "non-zero")):
        with pytest.raises(ValueError, match=why):
            TrainJob(**bad)


def test_cli_trains_an_affinity_network_with_offsets_in_x_y_z(tmp_path):
    """`membrane train --target affinities --context 1 --offset X,Y,Z`: the checkpoint's
    channels are the offsets typed in VAST's x, y, z order, stored as (dz, dy, dx)."""
    import tifffile
    from typer.testing import CliRunner

    from membrane_py.cli import app
    from membrane_py.train.checkpoint import load_checkpoint
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((6, 64, 64), seed=2)
    tifffile.imwrite(tmp_path / "em.tif", s.em, photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", s.instances.astype(np.uint32),
                     photometric="minisblack")
    common = ["train", "--images", str(tmp_path / "em.tif"), "--labels",
              str(tmp_path / "gt.tif"), "--out", str(tmp_path / "runs"), "--target",
              "affinities", "--context", "1", "--patch-size", "32", "--patches-per-epoch", "8",
              "--val-patches", "4", "--val-fraction", "0.34", "--depth", "2", "--base-filters",
              "4", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    r = CliRunner().invoke(app, [*common, "--offset", "0,0,1", "--offset", "3,0,0"])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "runs" / "unet.pt")
    assert (ck.target, ck.context) == ("affinities", 1)
    assert ck.class_names == ["affinity_1_0_0", "affinity_0_0_3"]
    r = CliRunner().invoke(app, [*common, "--offset", "0,0"])
    assert r.exit_code == 2 and "--offset" in r.output
