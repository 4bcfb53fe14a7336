"""Patch folders (writer, manifest, pairing, errors) and the PyTorch datasets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from membrane_py.augment import labels as L
from membrane_py.augment.dataset import OnTheFlyPatchDataset, PatchDataset
from membrane_py.augment.patches import PatchJob, generate_patches
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.augment.sampling import Pose, cut_patch
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.cli import app
from membrane_py.codes import decode_label_png

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
P = 48


@pytest.fixture(scope="module")
def synth():
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((2, 256, 256), seed=1)
    yy, xx = np.mgrid[0:256, 0:256]
    painted = (yy - 128) ** 2 + (xx - 120) ** 2 < 90**2
    labels = np.where(painted, s.membranes, 0).astype(np.uint8)
    return s, labels


def _write_folders(root: Path, s, labels, label_names=("b_border.png", "a.png")):
    (root / "em").mkdir()
    (root / "gt").mkdir()
    # labels named differently and in another sort order: pairing must go by name
    cv2.imwrite(str(root / "em" / "a.png"), s.em[0])
    cv2.imwrite(str(root / "em" / "b.png"), s.em[1])
    cv2.imwrite(str(root / "gt" / label_names[1]), labels[0])
    cv2.imwrite(str(root / "gt" / label_names[0]), labels[1])


def _job(root: Path, **kw) -> PatchJob:
    kw.setdefault("density", 2000.0)
    return PatchJob(str(root / "em"), str(root / "gt"), str(root / "pi"), str(root / "pl"),
                    patch_size=P, **kw)


def test_written_patches_are_saturated_and_aligned(tmp_path, synth):
    s, labels = synth
    _write_folders(tmp_path, s, labels)
    manifest = generate_patches(_job(tmp_path))
    assert manifest["n_classes"] == 2
    n_expected = [round(np.count_nonzero(labels[z]) / 1024**2 * 2000) for z in (0, 1)]
    assert [src["n_patches"] for src in manifest["sources"]] == n_expected
    assert Path(manifest["sources"][1]["label"]).name == "b_border.png"
    assert (tmp_path / "pi" / "a_00001.png").is_file()
    assert (tmp_path / "pl" / "b_00001.png").is_file()
    assert json.loads((tmp_path / "pi" / "manifest.json").read_text()) == manifest
    for rec in manifest["patches"]:
        pose = Pose(rec["cy"], rec["cx"], rec["angle"])
        z = rec["source"]
        lab = decode_label_png(L.read_image(tmp_path / "pl" / rec["file"]), 2)
        truth = cut_patch(labels[z], pose, P, nearest=True)
        assert truth.all()  # no unknown pixel in the source region
        np.testing.assert_array_equal(lab, truth)
        em = L.read_image(tmp_path / "pi" / rec["file"])
        np.testing.assert_array_equal(em, cut_patch(s.em[z], pose, P, nearest=False))


def test_job_errors(tmp_path, synth):
    s, labels = synth
    _write_folders(tmp_path, s, labels, label_names=("c.png", "a.png"))
    with pytest.raises(ValueError, match="have no label named like them") as err:
        generate_patches(_job(tmp_path))
    assert "holds 2 files: a.png, b.png" in str(err.value)  # what the folders really hold
    assert "holds 2 files: a.png, c.png" in str(err.value)
    (tmp_path / "gt" / "c.png").rename(tmp_path / "gt" / "b.png")
    cv2.imwrite(str(tmp_path / "gt" / "b.png"), labels[1][:200])
    with pytest.raises(ValueError, match="same size"):
        generate_patches(_job(tmp_path))
    cv2.imwrite(str(tmp_path / "gt" / "b.png"), np.zeros_like(labels[1]))
    cv2.imwrite(str(tmp_path / "gt" / "a.png"), np.zeros_like(labels[0]))
    with pytest.raises(ValueError, match=r"hold only class\(es\) \[0\]"):
        generate_patches(_job(tmp_path))
    for name, lab in zip(("a.png", "b.png"), labels, strict=True):
        cv2.imwrite(str(tmp_path / "gt" / name), lab)
    cv2.imwrite(str(tmp_path / "em" / "a.png"), s.em[0].astype(np.uint16) * 200)
    with pytest.raises(ValueError, match="8-bit"):
        generate_patches(_job(tmp_path))


def test_few_centres_warn_and_no_overwrite(tmp_path, synth):
    s, labels = synth
    small = np.zeros_like(labels)
    small[:, 100:160, 100:160] = labels[:, 100:160, 100:160]
    _write_folders(tmp_path, s, small)
    with pytest.warns(UserWarning, match="only .* valid patch centres"):
        generate_patches(_job(tmp_path, density=40000.0))
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_patches(_job(tmp_path))
    generate_patches(_job(tmp_path, overwrite=True, density=500.0))


def test_patch_dataset_reads_back(tmp_path, synth):
    s, labels = synth
    _write_folders(tmp_path, s, labels)
    generate_patches(_job(tmp_path, augment=AugmentConfig(blur_prob=0.5)))
    pre = PreprocessConfig()
    ds = PatchDataset(tmp_path / "pi", tmp_path / "pl", pre, AugmentConfig.all_on(), seed=3)
    assert ds.n_classes == 2 and len(ds) > 10
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, P, P)
    assert y.dtype == torch.int64 and y.shape == (P, P) and set(y.unique().tolist()) <= {1, 2}
    x2, y2 = ds[0]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # a folder without manifest (as mEMbrain writes it) infers K from the codes
    (tmp_path / "pl" / "manifest.json").unlink()
    (tmp_path / "pi" / "manifest.json").unlink()
    assert PatchDataset(tmp_path / "pi", tmp_path / "pl", pre).n_classes == 2


def test_on_the_fly_dataset_with_workers(synth):
    s, labels = synth
    ds = OnTheFlyPatchDataset(list(s.em), list(labels), P, 8, PreprocessConfig(clahe=True),
                              AugmentConfig.all_on(), seed=5)
    assert ds.n_classes == 2
    xs, ys = zip(*[ds[i] for i in range(8)], strict=True)
    for x, y in zip(xs, ys, strict=True):
        assert x.shape == (1, P, P) and y.shape == (P, P)
        assert y.min() >= 1  # saturated: no unknown pixel
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    bx, by = zip(*loader, strict=True)
    assert torch.equal(torch.cat(bx), torch.stack(xs))
    assert torch.equal(torch.cat(by), torch.stack(ys))
    assert not torch.equal(xs[0], xs[1])


def test_cli_patches(tmp_path, synth):
    s, labels = synth
    _write_folders(tmp_path, s, labels)
    args = ["patches", "--images", str(tmp_path / "em"), "--labels", str(tmp_path / "gt"),
            "--out-images", str(tmp_path / "pi"), "--out-labels", str(tmp_path / "pl"),
            "--patch-size", "32", "--density", "300", "--augment"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "patch pairs (2 classes)" in r.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "overwrite" in r.output


@pytest.mark.realdata
def test_isbi_patches(tmp_path):
    root = DATA / "isbi2012"
    if not root.exists():
        pytest.skip(f"real data absent: {root}")
    for sub in ("em", "gt"):
        (tmp_path / sub).mkdir()
    for name in ("00.png", "01.png"):  # links, not copies
        (tmp_path / "em" / name).symlink_to(root / "images" / name)
        (tmp_path / "gt" / name).symlink_to(root / "labels" / name)
    job = PatchJob(str(tmp_path / "em"), str(tmp_path / "gt"), str(tmp_path / "pi"),
                   str(tmp_path / "pl"), patch_size=128, density=40, label_map={0: 2, 255: 1})
    manifest = generate_patches(job)
    assert manifest["n_classes"] == 2 and len(manifest["patches"]) == 20
    ds = PatchDataset(tmp_path / "pi", tmp_path / "pl", PreprocessConfig())
    frac = np.mean([(ds[i][1] == 2).float().mean().item() for i in range(len(ds))])
    assert 0.1 < frac < 0.4  # membranes are a minority, as in the source labels
