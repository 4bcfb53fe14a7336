"""Pictures where a person would rather look than read (issue 11, item 8), through the CLI:
evaluate's error map, the demo preview and viewable previews of {1, 2} label PNGs."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import read_png, write_png
from membrane_py.volumes.synthetic import make_synthetic
from tests.predict_support import tiny_checkpoint


def test_evaluate_draws_false_and_missed_membrane_in_two_colours(tmp_path):
    syn = make_synthetic((1, 96, 112), seed=4)
    write_png(tmp_path / "em.png", syn.em[0])
    write_png(tmp_path / "lab.png", np.where(syn.membranes[0] == 2, 255, 0).astype(np.uint8))
    truth = syn.membranes[0] == 2
    seen = {"false": 0, "missed": 0}
    for seed in (0, 4):  # untrained tiny nets: one calls everything membrane, one nothing
        ckpt = tiny_checkpoint(tmp_path / f"net{seed}.pt", seed=seed)
        ev = tmp_path / f"ev{seed}"
        out = CliRunner().invoke(app, ["evaluate", str(ckpt), str(tmp_path / "em.png"),
                                       "--label", str(tmp_path / "lab.png"), "--out", str(ev)])
        assert out.exit_code == 0, out.output
        errors = read_png(ev / "em_errors.png").astype(int)
        pred = read_png(ev / "em_prediction.png") == 255  # membrane predicted
        r, g, b = errors[..., 0], errors[..., 1], errors[..., 2]
        false, missed, right = pred & ~truth, ~pred & truth, pred == truth
        assert ((r == b) & (r > g + 100))[false].all()  # magenta
        assert ((g == b) & (g > r + 100))[missed].all()  # cyan
        assert ((r == g) & (g == b))[right].all()  # agreement stays the grey EM
        np.testing.assert_array_equal(r[right], syn.em[0][right])
        seen["false"] += int(false.sum())
        seen["missed"] += int(missed.sum())
    assert seen["false"] > 0 and seen["missed"] > 0


def test_gt_writes_viewable_previews_that_patches_ignores(tmp_path):
    syn = make_synthetic((2, 128, 128), seed=5)
    for z in range(2):
        write_png(tmp_path / "inst" / f"sec{z}.png", syn.instances[z].astype(np.uint16))
        write_png(tmp_path / "em" / f"sec{z}.png", syn.em[z])
    out = CliRunner().invoke(app, ["gt", "membrane", str(tmp_path / "inst"),
                                   str(tmp_path / "gt")])
    assert out.exit_code == 0, out.output
    assert str(tmp_path / "gt" / "preview") in out.output.replace("\n", "")
    for z in range(2):
        labels = read_png(tmp_path / "gt" / f"sec{z}_border.png")
        assert set(np.unique(labels)) == {1, 2}  # the labels themselves are unchanged
        preview = read_png(tmp_path / "gt" / "preview" / f"sec{z}_border.png")
        np.testing.assert_array_equal(preview, np.where(labels == 2, 255, 127))
    out = CliRunner().invoke(app, ["patches", "--images", str(tmp_path / "em"), "--labels",
                                   str(tmp_path / "gt"), "--out-images", str(tmp_path / "pi"),
                                   "--out-labels", str(tmp_path / "pl"), "--patch-size", "64",
                                   "--no-rotate"])
    assert out.exit_code == 0, out.output
    cut = {p.name.split("_")[0] for p in (tmp_path / "pl").glob("*.png")}
    assert cut == {"sec0", "sec1"}  # paired with the labels, not their previews
