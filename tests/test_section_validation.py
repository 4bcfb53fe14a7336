"""Whole-section validation (issue 15, item 5): training scores whole validation sections
over a sweep of membrane thresholds, keeps the best checkpoint and its threshold by them, and
`predict` / `instances` / `evaluate` use that threshold unless told otherwise. Real training
on tiny synthetic folders, real CLI commands."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from predict_support import synthetic_training_folders
from typer.testing import CliRunner

from membrane_py.augment import labels as L
from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.infer.onnx_backend import OnnxModelInfo
from membrane_py.predict.evaluate import evaluate_images
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.section_validation import (
    THRESHOLDS,
    Sections,
    best_section_scores,
    pick_sections,
    whole_sections,
)
from membrane_py.train.trainer import folder_datasets, run_training, split_by_image

TINY = dict(depth=2, base_filters=8, patch_size=64, patches_per_epoch=16, val_patches=4,
            epochs=2, batch_size=8, device="cpu", val_fraction=0.5, lr=3e-3,
            voxel_size=[40.0, 8.0, 8.0])


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny membrane network trained on four 128^2 synthetic sections, two validating."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("sections")
    images, labels = synthetic_training_folders(root, sections=4, side=128)
    events = []
    cfg = TrainJob(image_dir=str(images), label_dir=str(labels), out_dir=str(root / "run"),
                   name="m", **TINY)
    result = run_training(cfg, progress=events.append)
    return root, images, labels, cfg, result, events


def test_sections_are_scored_per_threshold_and_pick_checkpoint_and_threshold(trained,
                                                                              tmp_path):
    root, images, labels, cfg, result, events = trained
    for record in result.history:
        assert record["val_section_threshold"] in THRESHOLDS
        assert 0.0 <= record["val_section_v_rand"] <= 1.0 and "val_v_rand" in record
        # scored as it is and with the batch norm adapted: the better way counts
        plain, adapted = record["val_section_v_rand_plain"], record["val_section_v_rand_adapted"]
        assert record["val_section_v_rand"] == max(plain, adapted)
        assert record["val_section_adapt_bn"] == (adapted > plain)
    ck = load_checkpoint(result.best_path)
    best = max(result.history, key=lambda r: r["val_section_v_rand"])
    assert ck.best["metric"] == "val_section_v_rand" and ck.epoch == best["epoch"]
    assert ck.threshold == best["val_section_threshold"] == result.threshold
    assert ck.adapt_bn == best["val_section_adapt_bn"] == result.adapt_bn
    assert torch.load(result.best_path, weights_only=True)["threshold"] == ck.threshold
    assert f"membrane threshold {ck.threshold:g}" in result.summary()
    logged = [e.message for e in events if e.kind == "log"]
    assert sum("whole-section validation (2 sections" in m for m in logged) == cfg.epochs
    assert (root / "run" / "m.log").read_text().count("whole-section validation") == cfg.epochs

    # the score itself: every threshold, the best of them, and the V_rand evaluate reports
    _, val = split_by_image(4, cfg.val_fraction, cfg.seed)
    files = sorted(images.iterdir())
    val_images = [L.read_image(files[i]) for i in val]
    label_files = [labels / files[i].name for i in val]
    gt = L.convert_labels([L.decode_label_image(L.read_image(p)) for p in label_files],
                          "isbi")[0]
    score = best_section_scores(ck.build_model(), Sections(val_images, gt),
                                ck.preprocess_config, torch.device("cpu"))
    assert score.adapt_bn == ck.adapt_bn
    assert list(score.by_threshold) == list(THRESHOLDS) and score.n_sections == 2
    assert score.v_rand == max(score.by_threshold.values())
    assert score.by_threshold[score.threshold] == score.v_rand
    assert score.threshold == ck.threshold
    assert score.v_rand == pytest.approx(ck.best["value"], abs=1e-6)
    said = []
    rows = evaluate_images(result.best_path, [files[i] for i in val], tmp_path / "ev",
                           labels=label_files, label_format="isbi", device="cpu",
                           progress=said.append)
    assert any(f"membrane threshold {ck.threshold:g} (the model's" in e.message for e in said)
    # evaluate adapts the batch norm by default exactly when the network validated so
    assert any("validated better so" in e.message for e in said) == ck.adapt_bn
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == rows
    assert rows[-1]["v_rand"] == pytest.approx(score.v_rand, abs=0.02)


def test_predict_records_the_threshold_and_instances_uses_it(trained, tmp_path):
    root, images, labels, _, result, _ = trained
    ck = load_checkpoint(result.best_path)
    r = cli("predict", result.best_path, "--source", images, "--out", tmp_path / "pred",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    identity = json.loads((tmp_path / "pred" / "job_identity.json").read_text())
    assert identity["membrane_threshold"] == ck.threshold
    info = OnnxModelInfo.from_json(OnnxModelInfo.from_checkpoint(ck).to_json())
    assert info.threshold == ck.threshold  # exported .onnx models carry it too
    vsvi = tmp_path / "pred" / "probability.vsvi"
    r = cli("instances", vsvi, "-o", tmp_path / "a.zarr", "--mode", "2d")
    assert r.exit_code == 0, r.output
    assert f"membrane threshold {ck.threshold:g} (the network's" in r.output
    r = cli("instances", vsvi, "-o", tmp_path / "b.zarr", "--mode", "2d", "--threshold", "0.9")
    assert r.exit_code == 0, r.output
    assert "membrane threshold 0.9 (given)" in r.output
    # maps that no prediction folder vouches for (here the EM itself): the default, said so
    r = cli("instances", images, "-o", tmp_path / "d.zarr", "--mode", "2d")
    assert r.exit_code == 0, r.output
    assert "membrane threshold 0.71 (the default" in r.output
    # evaluate: an explicit threshold wins over the model's
    r = cli("evaluate", result.best_path, sorted(images.iterdir())[0], "--label-dir", labels,
            "--out", tmp_path / "e", "--threshold", "0.45", "--device", "cpu")
    assert r.exit_code == 0 and "membrane threshold 0.45 (given)" in r.output


def test_validation_folders_of_their_own_validate_while_every_image_trains(tmp_path):
    """--val-images / --val-labels: the given section validates (its whole-section score is
    the checkpoint's), and every image of --images trains (no split)."""
    torch.set_num_threads(2)
    images, labels = synthetic_training_folders(tmp_path, sections=4, side=128)
    val_images, val_labels = tmp_path / "val_im", tmp_path / "val_lab"
    val_images.mkdir()
    val_labels.mkdir()
    (images / "s3.png").rename(val_images / "s3.png")
    (labels / "s3.png").rename(val_labels / "s3.png")
    cfg = TrainJob(image_dir=str(images), label_dir=str(labels), out_dir=str(tmp_path / "run"),
                   name="m", **{**TINY, "epochs": 1}, val_image_dir=str(val_images),
                   val_label_dir=str(val_labels))
    train, val, _ = folder_datasets(cfg, cfg.image_dir, cfg.label_dir, "auto", cfg.val_fraction,
                                    val_dirs=(cfg.val_image_dir, cfg.val_label_dir))
    section = L.read_image(val_images / "s3.png")
    assert len(train.images) == 3 and len(val.images) == 1
    assert np.array_equal(val.images[0], section)
    assert not any(np.array_equal(im, section) for im in train.images)
    said = []
    folder_datasets(cfg, cfg.image_dir, cfg.label_dir, "auto", cfg.val_fraction, said.append,
                    val_dirs=(cfg.image_dir, cfg.label_dir))  # validating on training images
    assert any(e.kind == "warning" and "are training images too" in e.message for e in said)
    said.clear()
    folder_datasets(cfg, cfg.image_dir, cfg.label_dir, "auto", cfg.val_fraction, said.append,
                    val_dirs=(cfg.val_image_dir, cfg.val_label_dir))
    assert not any(e.kind == "warning" for e in said)

    tiny = ["--depth", 2, "--base-filters", 8, "--patch-size", 64, "--patches-per-epoch", 16,
            "--val-patches", 4, "--epochs", 1, "--batch-size", 8, "--device", "cpu",
            "--pretrained", "none", "--out", tmp_path / "run", "--name", "m"]
    r = cli("train", "--images", images, "--labels", labels, "--val-images", val_images,
            "--val-labels", val_labels, *tiny)
    assert r.exit_code == 0, r.output
    assert f"validationimages:{val_images}(1)" in "".join(r.output.split())  # rich wraps
    assert "whole-section validation (1 sections" in (tmp_path / "run" / "m.log").read_text()
    ck = load_checkpoint(tmp_path / "run" / "m.pt")
    gt = L.convert_labels([L.decode_label_image(L.read_image(val_labels / "s3.png"))],
                          "isbi")[0]
    score = best_section_scores(ck.build_model(), Sections([section], gt),
                                ck.preprocess_config, torch.device("cpu"))
    assert score.v_rand == pytest.approx(ck.best["value"], abs=1e-6)

    # half a pair, or labels of other classes: one line each, nothing trained
    r = cli("train", "--images", images, "--labels", labels, "--val-images", val_images,
            *tiny[:-4], "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "--val-images and --val-labels" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "r2").exists()
    classes = {name: tmp_path / name for name in ("two", "three")}
    for k, folder in enumerate(classes.values(), 2):
        folder.mkdir()
        for path in sorted(labels.iterdir()) + [val_labels / "s3.png"]:
            membrane = L.read_image(path) == 0
            write_png(folder / path.name, np.where(membrane, k, 1).astype(np.uint8))
    (classes["two"] / "s3.png").unlink()
    r = cli("train", "--images", images, "--labels", classes["two"], "--val-images",
            val_images, "--val-labels", classes["three"], *tiny[:-4], "--out", tmp_path / "r3")
    assert r.exit_code == 2 and "hold class 3, the training labels" in r.output, r.output


def test_patch_folders_keep_patch_validation(tmp_path):
    torch.set_num_threads(2)
    images, labels = synthetic_training_folders(tmp_path, sections=3, side=96)
    r = cli("patches", "--images", images, "--labels", labels, "--out-images", tmp_path / "pi",
            "--out-labels", tmp_path / "pl", "--patch-size", "32", "--density", "300",
            "--no-rotate")
    assert r.exit_code == 0, r.output
    events = []
    cfg = TrainJob(image_dir=str(tmp_path / "pi"), label_dir=str(tmp_path / "pl"),
                   out_dir=str(tmp_path / "run"),
                   **{**TINY, "patch_size": 32, "epochs": 1})
    result = run_training(cfg, progress=events.append)
    assert "val_v_rand" in result.history[0] and "val_section_v_rand" not in result.history[0]
    assert any("no whole validation sections" in e.message for e in events if e.kind == "log")
    ck = load_checkpoint(result.best_path)
    assert ck.threshold is None and result.threshold is None
    assert ck.best["metric"] == "val_loss"
    with pytest.raises(ValueError, match="needs whole validation sections"):
        run_training(replace(cfg, best_metric="val_section_v_rand",
                             out_dir=str(tmp_path / "run2")))
    # a patch folder trains as it is while a whole section of its own validates
    whole = replace(cfg, val_image_dir=str(images), val_label_dir=str(labels))
    train, val, _ = folder_datasets(whole, whole.image_dir, whole.label_dir, "auto", 0.3,
                                    val_dirs=(whole.val_image_dir, whole.val_label_dir))
    assert len(train) == len(list((tmp_path / "pi").glob("*.png"))) and len(val.images) == 3
    result = run_training(replace(whole, out_dir=str(tmp_path / "run3")))
    assert "val_section_v_rand" in result.history[0] and result.threshold is not None


def test_section_picking():
    assert pick_sections(20, 8) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert pick_sections(3, 8) == [0, 1, 2] and pick_sections(5, 0) == []
    assert whole_sections(None, 8) is None
    with pytest.raises(ValueError, match="same shape"):
        Sections([np.zeros((8, 8), np.uint8)], [np.zeros((4, 4), np.uint16)])
