"""Evaluation writes pictures and a metric table for images of any size."""

import json

import cv2
import numpy as np
import pytest

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.predict.evaluate import evaluate_images, predict_probabilities
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint
from membrane_py.volumes.synthetic import make_synthetic


@pytest.fixture
def ckpt(tmp_path):
    net = UNet(UNetConfig(depth=3, base_filters=4))
    ck = Checkpoint(state_dict=net.state_dict(), model=net.config.to_dict(),
                    class_names=["non-membrane", "membrane"],
                    preprocess=PreprocessConfig(clahe=True).to_dict())
    return save_checkpoint(tmp_path / "net.pt", ck)


def test_predict_pads_and_crops_any_size():
    net = UNet(UNetConfig(depth=3, base_filters=4)).eval()
    img = np.random.default_rng(0).integers(0, 256, (37, 50), dtype=np.uint8)
    prob = predict_probabilities(net, img, PreprocessConfig())
    assert prob.shape == (2, 37, 50)
    assert np.allclose(prob.sum(0), 1.0, atol=1e-5)


def test_evaluate_writes_pictures_and_metrics(tmp_path, ckpt):
    syn = make_synthetic((2, 100, 90), seed=2)
    imgs, labs = [], []
    for z in range(2):
        imgs.append(tmp_path / f"em{z}.png")
        labs.append(tmp_path / f"lab{z}.png")
        cv2.imwrite(str(imgs[-1]), syn.em[z])
        cv2.imwrite(str(labs[-1]), np.where(syn.membranes[z] == 2, 255, 0).astype(np.uint8))
    out = tmp_path / "eval"
    rows = evaluate_images(ckpt, imgs, out, labels=labs, label_format="codes")
    assert [r["image"] for r in rows] == ["em0.png", "em1.png", "mean"]
    for z in range(2):
        for kind in ("prediction", "probability", "overlay"):
            pic = cv2.imread(str(out / f"em{z}_{kind}.png"), cv2.IMREAD_UNCHANGED)
            assert pic.shape[:2] == (100, 90)
        assert (out / f"em{z}_errors.png").is_file()  # colours: tests/test_pictures_cli.py
    saved = json.loads((out / "metrics.json").read_text())
    assert saved[-1]["image"] == "mean" and 0 <= saved[-1]["v_rand"] <= 1
    assert 0 <= saved[0]["pixel_error"] <= 1
    assert (out / "metrics.csv").read_text().startswith("image,pixel_error")


def test_evaluate_without_labels_only_draws(tmp_path, ckpt):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 64), 128, np.uint8))
    assert evaluate_images(ckpt, [tmp_path / "a.png"], tmp_path / "o") == []
    assert (tmp_path / "o" / "a_overlay.png").exists()
    assert not (tmp_path / "o" / "metrics.json").exists()
    assert not (tmp_path / "o" / "a_errors.png").exists()


def test_cli_train_then_evaluate(tmp_path):
    from typer.testing import CliRunner

    from membrane_py.cli import app

    syn = make_synthetic((3, 128, 128), seed=4)
    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    for z in range(3):
        cv2.imwrite(str(tmp_path / "im" / f"s{z}.png"), syn.em[z])
        isbi = np.where(syn.membranes[z] == 2, 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "lab" / f"s{z}.png"), isbi)
    runner = CliRunner()
    res = runner.invoke(app, [
        "train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"),
        "--label-format", "isbi", "--out", str(tmp_path / "run"), "--depth", "2",
        "--base-filters", "4", "--patch-size", "64", "--patches-per-epoch", "8",
        "--val-patches", "4", "--epochs", "1", "--batch-size", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "unet.pt").exists()
    res = runner.invoke(app, [
        "evaluate", str(tmp_path / "run" / "unet.pt"), str(tmp_path / "im" / "s0.png"),
        "--label-dir", str(tmp_path / "lab"), "--label-format", "isbi",
        "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "v_rand" in res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())[0]["image"] == "s0.png"


def test_cli_evaluate_names_a_missing_or_unreadable_image(tmp_path, ckpt):
    from typer.testing import CliRunner

    from membrane_py.cli import app

    (tmp_path / "notes.txt").write_text("not an image")
    for image, expect in ((tmp_path / "nope.png", "image not found"),
                          (tmp_path / "notes.txt", "cannot decode image")):
        r = CliRunner().invoke(app, ["evaluate", str(ckpt), str(image), "--out",
                                     str(tmp_path / "ev")])
        assert r.exit_code == 2 and expect in r.output and str(image) in r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_a_folder_of_images_stands_for_its_images(tmp_path, ckpt):
    """`membrane evaluate MODEL em/ --label-dir gt/` pairs every image of em/ with its label."""
    from membrane_py.predict.evaluate import EvaluateJob, run_evaluation

    syn = make_synthetic((2, 64, 64), seed=3)
    (tmp_path / "em").mkdir()
    (tmp_path / "gt").mkdir()
    for z in range(2):
        cv2.imwrite(str(tmp_path / "em" / f"s{z}.png"), syn.em[z])
        cv2.imwrite(str(tmp_path / "gt" / f"s{z}.png"),
                    np.where(syn.membranes[z] == 2, 255, 0).astype(np.uint8))
    job = EvaluateJob(checkpoint=str(ckpt), images=[str(tmp_path / "em")],
                      label_dir=str(tmp_path / "gt"), label_format="codes",
                      out=str(tmp_path / "o"))
    rows = run_evaluation(job).rows
    assert [r["image"] for r in rows] == ["s0.png", "s1.png", "mean"]
