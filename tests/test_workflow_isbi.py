"""The README's workflow, end to end, on ISBI 2012 with the documented commands and defaults.

gt import -> train (a short time budget) -> evaluate on held-out sections -> serve the
sections -> predict through the served volume with --load -> instances -> paint. Every
step is the `membrane` command a user types, in its own process; only the training budget
and the folders are chosen here. The budget is a number of patches, not ``--minutes``, so
that the network, and the score, do not depend on how busy the machine is. The V_rand
floor is what this short run must reach on sections 15-19 at the default threshold; the
accuracy a longer run reaches is measured by ``bench/accuracy_isbi.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.section_validation import THRESHOLDS
from membrane_py.vastapi.client import VastClient

pytestmark = [pytest.mark.realdata, pytest.mark.timeout(1800)]  # minutes of CPU work

#: V_rand (mean over ISBI 15-19) after one epoch of 384 patches with every other training
#: default (about 2 CPU minutes): measured 0.44 at threshold 0.5 (merges through membrane
#: gaps dominate: split 0.99, merge 0.29). Evaluate now scores at the threshold the
#: checkpoint chose by whole-section validation (0.5 is among those tried); not re-measured
#: since (2026-12-01: under a load average near 30 the training step alone exceeded its
#: 20-minute timeout). The floor catches a broken pipeline.
FLOOR = 0.3
BUDGET = ("--epochs", "1", "--patches-per-epoch", "384")


def membrane(*args, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``membrane ARGS`` as a user would; fail the test with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "membrane_py", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"membrane {' '.join(map(str, args))}:\n{proc.stdout}\n" \
                                 f"{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def copy_sections(src: Path, dst: Path, stems: list[str]) -> Path:
    dst.mkdir(parents=True)
    for stem in stems:
        shutil.copyfile(src / f"{stem}.png", dst / f"{stem}.png")
    return dst


def test_readme_workflow_on_isbi(shared_data, tmp_path):
    isbi = shared_data / "isbi2012"
    train_stems = [f"{i:02d}" for i in range(15)]
    test_stems = [f"{i:02d}" for i in range(15, 20)]
    em_train = copy_sections(isbi / "images", tmp_path / "em_train", train_stems)
    em_test = copy_sections(isbi / "images", tmp_path / "em_test", test_stems)
    em_all = copy_sections(isbi / "images", tmp_path / "em_all", train_stems + test_stems)
    lab_train = copy_sections(isbi / "labels", tmp_path / "lab_train", train_stems)
    lab_test = copy_sections(isbi / "labels", tmp_path / "lab_test", test_stems)

    # 1. ground truth: ISBI's 0/255 masks -> classes 1 = non-membrane, 2 = membrane
    membrane("gt", "import", lab_train, "gt_train", cwd=tmp_path)
    membrane("gt", "import", lab_test, "gt_test", cwd=tmp_path)

    # 2. train with the defaults a user gets, for a short budget
    out = membrane("train", "--images", em_train, "--labels", "gt_train", "--out", "runs",
                   "--name", "membranes", *BUDGET, cwd=tmp_path, timeout=1200)
    model = tmp_path / "runs" / "membranes.pt"
    assert model.is_file(), out.stdout + out.stderr
    # validation predicted the held-out training sections whole and chose the threshold
    threshold = load_checkpoint(model).threshold
    assert threshold in THRESHOLDS and "whole-section validation" in out.stdout + out.stderr

    # 3. evaluate on the held-out sections: pictures and numbers
    said = membrane("evaluate", model, *sorted(em_test.iterdir()), "--label-dir", "gt_test",
                    "--out", "eval", cwd=tmp_path)
    assert f"membrane threshold {threshold:g} (the model's" in " ".join(
        (said.stdout + said.stderr).split())
    rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    mean = next(r for r in rows if r["image"] == "mean")
    print(f"ISBI 15-19 mean V_rand after {' '.join(BUDGET)} at the model's threshold "
          f"{threshold:g}: {mean['v_rand']:.4f}")
    assert mean["v_rand"] >= FLOOR, rows
    assert (tmp_path / "eval" / "15_errors.png").is_file()

    # 4. serve the sections like VAST and predict through it, loading the layer back
    server = subprocess.Popen([sys.executable, "-m", "membrane_py", "serve", "--volume",
                               em_all, "--port", "0", "--state", tmp_path / "state",
                               "--allow-load", tmp_path / "pred", "--voxel-size", "4", "4",
                               "50"],
                              cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=(tmp_path / "serve.log").open("w"), text=True)
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)\s*$", line.strip()).group(1))
        vast = f"vast://127.0.0.1:{port}"
        membrane("predict", model, "--source", vast, "--out", "pred", "--load", cwd=tmp_path)
        vsvi = tmp_path / "pred" / "probability.vsvi"
        assert vsvi.is_file()
        with VastClient("127.0.0.1", port) as client:
            names = client.get_layer_names()
        assert names[-1].endswith("prediction") and len(names) == 3, names  # one layer added

        # 5. instances, then paint them into a VAST segmentation layer
        membrane("instances", vsvi, "-o", "cells.zarr", cwd=tmp_path)
        store = zarr.open(str(tmp_path / "cells.zarr"), mode="r")
        arrays = [store[k] for k in store.array_keys()] if hasattr(store, "array_keys") \
            else [store]
        ids = np.asarray(arrays[0][:])
        assert ids.shape[-3:] == (20, 512, 512) and len(np.unique(ids[15])) > 50
        painted = membrane("paint", vsvi, "--vast", vast, "--mode", "instances2d",
                           cwd=tmp_path)
        assert "paint" in (painted.stdout + painted.stderr).lower()
    finally:
        server.terminate()
        server.wait(30)
