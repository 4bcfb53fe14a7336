"""What a new user meets first in `membrane gt`, `patches`, `train` and `evaluate` (issue 11,
items 1-3), through the CLI: labels train what the user meant, the defaults a membrane user
should get, and Ctrl-C leaving a resumable checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from cli_process import CLI
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.volumes.synthetic import make_synthetic

#: a tiny network and a short run (seconds on a CPU)
TINY = ["--depth", "2", "--base-filters", "4", "--patch-size", "32", "--patches-per-epoch", "8",
        "--val-patches", "4", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """EM sections s0..s2, their instance ids (12 per section, small numbers), the same ids as
    VAST numbers them (from 1000 on) and an ISBI-style 0/255 mask."""
    root = tmp_path_factory.mktemp("data")
    s = make_synthetic((3, 96, 96), seed=2)
    for z in range(3):
        write_png(root / "em" / f"s{z}.png", s.em[z])
        write_png(root / "ids" / f"s{z}.png", s.instances[z].astype(np.uint16))
        write_png(root / "vast_ids" / f"s{z}.png", (s.instances[z] + 1000).astype(np.uint16))
        write_png(root / "isbi" / f"s{z}.png",
                  np.where(s.membranes[z] == 2, 0, 255).astype(np.uint8))
    tifffile.imwrite(root / "ids.tif", s.instances.astype(np.uint16), photometric="minisblack")
    return root


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def train(data: Path, labels: Path, out: Path, *extra: str):
    return cli("train", "--images", data / "em", "--labels", labels, "--out", out, *TINY, *extra)


def test_gt_membrane_trains_two_classes_and_codes_are_refused(data, tmp_path):
    r = cli("gt", "membrane", data / "ids", tmp_path / "gt", "--thickness", "2")
    assert r.exit_code == 0, r.output
    r = train(data, tmp_path / "gt", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "classes format, 2 classes" in r.output
    ck = load_checkpoint(tmp_path / "run" / "unet.pt")
    assert ck.class_names == ["non-membrane", "membrane"]
    # the 206-class network of the report: {1, 2} read as mEMbrain codes is refused
    r = train(data, tmp_path / "gt", tmp_path / "run2", "--label-format", "codes")
    assert r.exit_code == 2 and "more than --max-classes 16" in r.output
    assert "--label-format auto or classes" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run2" / "unet.pt").exists()
    # evaluate reads the same labels with the same default
    r = cli("evaluate", tmp_path / "run" / "unet.pt", data / "em" / "s0.png", "--label-dir",
            tmp_path / "gt", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())[0]["v_rand"] > 0
    # labels of a volume, named after it, do not pair with the EM: evaluate says what is there
    r = cli("gt", "membrane", data / "ids.tif", tmp_path / "gt_vol", "--thickness", "2")
    assert r.exit_code == 0, r.output
    r = cli("evaluate", tmp_path / "run" / "unet.pt", data / "em" / "s0.png", "--label-dir",
            tmp_path / "gt_vol", "--out", tmp_path / "ev2")
    assert r.exit_code == 2 and "1 of 1 images have no label" in r.output
    assert "3 files: ids_0000_border.png" in r.output


def test_instance_ids_and_bad_formats_are_one_line(data, tmp_path):
    r = train(data, data / "ids", tmp_path / "run")
    assert r.exit_code == 2 and "could be 12 painted classes or a few instance ids" in r.output
    assert "membrane gt membrane" in r.output and "--label-format classes" in r.output
    r = train(data, data / "vast_ids", tmp_path / "run")
    assert r.exit_code == 2 and "(12 distinct) are no label format" in r.output
    r = train(data, data / "vast_ids", tmp_path / "run", "--label-format", "classes")
    assert r.exit_code == 2
    assert "1001..1012, so 1012 classes, more than --max-classes 16" in r.output
    r = train(data, data / "ids", tmp_path / "run", "--label-format", "labels")
    assert r.exit_code == 2 and "label_format must be one of" in r.output
    r = cli("patches", "--images", data / "em", "--labels", data / "vast_ids", "--out-images",
            tmp_path / "pi", "--out-labels", tmp_path / "pl", "--patch-size", "32")
    assert r.exit_code == 2 and "no label format" in r.output
    assert not (tmp_path / "pi").exists()


def test_isbi_mask_is_detected_in_patches_train_and_evaluate(data, tmp_path):
    r = cli("patches", "--images", data / "em", "--labels", data / "isbi", "--out-images",
            tmp_path / "pi", "--out-labels", tmp_path / "pl", "--patch-size", "32",
            "--density", "300", "--no-rotate")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert manifest["n_classes"] == 2 and manifest["job"]["label_format"] == "auto"
    # the written patches: membrane (0 in the ISBI mask) became class 2, code 255
    r = train(data, data / "isbi", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "isbi format, 2 classes" in r.output
    r = cli("train", "--images", tmp_path / "pi", "--labels", tmp_path / "pl", "--out",
            tmp_path / "run2", *TINY)
    assert r.exit_code == 0, r.output
    assert "codes format, 2 classes" in r.output  # the patch folder's manifest says so
    r = cli("evaluate", tmp_path / "run" / "unet.pt", data / "em" / "s1.png", "--label-dir",
            data / "isbi", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    # read as codes instead, the mask would mean membrane = 255: explicitly asked, it is used
    r = cli("patches", "--images", data / "em", "--labels", data / "isbi", "--out-images",
            tmp_path / "qi", "--out-labels", tmp_path / "ql", "--patch-size", "32",
            "--label-format", "classes")
    assert r.exit_code == 2 and "values 0..255" in r.output


def test_unpaired_folders_list_what_they_hold_and_gt_names_after_the_em(data, tmp_path):
    r = cli("gt", "membrane", data / "ids.tif", tmp_path / "gt")
    assert r.exit_code == 0, r.output
    r = train(data, tmp_path / "gt", tmp_path / "run")
    assert r.exit_code == 2
    assert "3 of 3 images have no label" in r.output
    assert "3 files: s0.png, s1.png, s2.png" in r.output
    assert "3 files: ids_0000_border.png" in r.output and "--images" in r.output
    r = cli("gt", "membrane", data / "ids.tif", tmp_path / "gt2", "--images", data / "em",
            "--box", "0,95,0,95,1,2")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "gt2").iterdir() if p.is_file()) == ["s1_border.png",
                                                                    "s2_border.png"]
    r = cli("gt", "membrane", data / "ids.tif", tmp_path / "gt3", "--images", tmp_path / "gt2")
    assert r.exit_code == 2 and "holds 2 images" in r.output and "has 3 sections" in r.output


def test_defaults_weighted_ce_device_size_and_every_augmentation(data, tmp_path):
    r = cli("gt", "membrane", data / "ids", tmp_path / "gt")
    assert r.exit_code == 0, r.output
    job = tmp_path / "job.json"
    r = cli("train", "--images", data / "em", "--labels", tmp_path / "gt", "--out",
            tmp_path / "run", "--patch-size", "32", "--patches-per-epoch", "4", "--val-patches",
            "2", "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--save-job", job,
            "--pretrained", "none")  # a new network (by default the starter model's, if it fits)
    assert r.exit_code == 0, r.output
    spec = json.loads(job.read_text())
    assert spec["loss"] == "weighted_ce" and spec["depth"] is None
    aug = spec["augment"]
    assert aug["blur_prob"] > 0 and aug["motion_blur_prob"] > 0 and aug["elastic_prob"] > 0
    assert aug["equalize"] != "none" and aug["brightness"] > 0 and aug["flip"]
    assert "network: depth 4, 16 base filters (the default on cpu" in r.output
    ck = load_checkpoint(tmp_path / "run" / "unet.pt")
    assert (ck.model["depth"], ck.model["base_filters"]) == (4, 16)
    assert (ck.train_config["depth"], ck.train_config["base_filters"]) == (4, 16)
    assert ck.train_config["loss"] == "weighted_ce" and len(ck.train_config["class_weights"]) == 2
    r = train(data, tmp_path / "gt", tmp_path / "run", "--augmentations", "blurr")
    assert r.exit_code == 2 and "unknown augmentation 'blurr'" in r.output
    r = train(data, tmp_path / "gt", tmp_path / "run2", "--augmentations", "none,blur")
    assert r.exit_code == 2 and "'none' cannot be combined" in r.output
    r = train(data, tmp_path / "gt", tmp_path / "run2", "--augmentations", "intensity",
              "--save-job", job)  # named ones only
    assert r.exit_code == 0, r.output
    aug = json.loads(job.read_text())["augment"]
    assert aug["brightness"] > 0 and aug["blur_prob"] == aug["elastic_prob"] == 0 and aug["flip"]
    r = train(data, tmp_path / "gt", tmp_path / "run3", "--augmentations", "none",
              "--no-augment", "--save-job", job)
    assert r.exit_code == 0, r.output
    assert json.loads(job.read_text())["augment"] is None


def test_minutes_budget_stops_cleanly_and_saves(data, tmp_path):
    r = cli("gt", "membrane", data / "ids", tmp_path / "gt")
    assert r.exit_code == 0, r.output
    args = [a for a in TINY if a not in ("--epochs", "1")]
    r = cli("train", "--images", data / "em", "--labels", tmp_path / "gt", "--out",
            tmp_path / "run", *args, "--epochs", "1000", "--minutes", "0.04",
            "--augmentations", "all")
    assert r.exit_code == 0, r.output
    assert "time budget of 0.04 minutes reached" in r.output
    ck = load_checkpoint(tmp_path / "run" / "unet_last.pt")
    assert 1 <= ck.epoch < 1000 and len(ck.history) == ck.epoch
    assert (tmp_path / "run" / "unet.pt").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
def test_ctrl_c_saves_last_checkpoint_and_the_printed_job_resumes(data, tmp_path):
    r = cli("gt", "membrane", data / "ids", tmp_path / "gt")
    assert r.exit_code == 0, r.output
    out = tmp_path / "run"
    long_epoch = [a if a != "8" else "100000" for a in TINY]  # the epoch never ends by itself
    cmd = [*CLI, "train", "--images",
           str(data / "em"), "--labels", str(tmp_path / "gt"), "--out", str(out), *long_epoch]
    env = {**os.environ, "COLUMNS": "1000"}  # rich wraps at 80 columns otherwise
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    metrics = out / "unet.metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and '"iter"' in metrics.read_text()):  # first logged iteration
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    resume_job = out / "unet_resume.json"
    assert f"membrane run {resume_job}" in stderr and "Traceback" not in stderr
    assert f"saved {out / 'unet_last.pt'}" in stderr
    torch.load(out / "unet_last.pt", weights_only=True)  # loads with weights_only
    ck = load_checkpoint(out / "unet_last.pt")
    assert ck.epoch == 0 and ck.history == [] and ck.optimizer  # saved in the middle of epoch 1

    spec = json.loads(resume_job.read_text())
    assert spec["resume"] == str(out / "unet_last.pt") and spec["depth"] == 2
    spec["patches_per_epoch"] = 8  # finish quickly
    resume_job.write_text(json.dumps(spec))
    r = cli("run", resume_job)
    assert r.exit_code == 0, r.output
    done = load_checkpoint(out / "unet_last.pt")
    assert done.epoch == 1 and [h["epoch"] for h in done.history] == [1]
    assert "Base Network: " + str(out / "unet_last.pt") in (out / "unet.log").read_text()


@pytest.mark.realdata
def test_isbi_raw_masks_and_gt_import_give_the_same_patches(shared_data, tmp_path):
    """One convention: ISBI 2012's 0/255 masks read directly (auto -> isbi) and their
    `gt import` classes (auto -> classes) cut byte-identical patch folders."""
    for name in ("images", "labels"):
        (tmp_path / name).mkdir()
        for stem in ("00", "01"):
            shutil.copyfile(shared_data / "isbi2012" / name / f"{stem}.png",
                            tmp_path / name / f"{stem}.png")  # a temporary copy (Windows: no links)
    r = cli("gt", "import", tmp_path / "labels", tmp_path / "gt")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "gt").iterdir() if p.is_file()) == ["00_label.png",
                                                                   "01_label.png"]
    folders = {}
    for labels in ("labels", "gt"):
        r = cli("patches", "--images", tmp_path / "images", "--labels", tmp_path / labels,
                "--out-images", tmp_path / f"{labels}_pi", "--out-labels",
                tmp_path / f"{labels}_pl", "--patch-size", "64", "--density", "20")
        assert r.exit_code == 0, r.output
        folders[labels] = {p.name: p.read_bytes() for p in (tmp_path / f"{labels}_pl").iterdir()
                           if p.suffix == ".png"}
    assert len(folders["gt"]) == 10 and folders["gt"] == folders["labels"]  # 5 per 512^2
