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
