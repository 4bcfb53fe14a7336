"""`make demo` end to end on a very small configuration (train, serve, predict, score)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import read_png
from membrane_py.demo import DemoConfig, run_demo
from membrane_py.vastapi.descriptors import read_vsvi
from membrane_py.volumes.synthetic import make_synthetic


def test_small_demo_trains_predicts_loads_and_scores(tmp_path):
    cfg = DemoConfig(out=tmp_path, volume="synthetic:3x256x256", train_shape=(2, 256, 256),
                     depth=2, base_filters=4, patch_size=64, batch_size=8, iterations=10)
    events = []
    r = run_demo(cfg, progress=events.append)
    assert r.checkpoint.is_file() and r.identical and r.layer_nr >= 1
    assert r.n_tiles == 3 and r.megabytes > 0
    assert r.descriptor == tmp_path / "prediction" / "probability.vsvi"
    v = read_vsvi(r.descriptor)
    assert (v.source_max_s, v.target_data_size_x, v.target_layer_name) == \
        (2, 256, "membrane-py demo prediction")
    tile = read_png(r.prediction_dir / "mip0" / "Sect_000000" / "sect_000000_r0_c0.png")
    assert tile.shape == (1024, 1024) and tile[:256, :256].min() >= 1
    assert 0 <= r.pixel_error < 0.5 and 0 < r.v_rand <= 1 and np.isfinite(r.v_rand)
    assert {e.task for e in events} >= {"train", "predict", "demo: score against the ground truth"}
    # one picture: EM | probability | instances of the middle section, 256 px panels
    assert r.preview == tmp_path / "preview.png"
    pic = read_png(r.preview)
    assert pic.shape == (256, 3 * 256 + 2 * 8, 3)
    em = make_synthetic((3, 256, 256), 0).em[1]  # what the server serves
    np.testing.assert_array_equal(pic[:, :256, 0], em)
    prob = read_png(r.prediction_dir / "mip0" / "Sect_000001" / "sect_000001_r0_c0.png")
    np.testing.assert_array_equal(pic[:, 264:520, 1], prob[:256, :256])
    instances = pic[:, 528:]
    assert len(np.unique(instances.reshape(-1, 3), axis=0)) > 5  # several coloured cells


def test_demo_again_replaces_its_own_prediction_and_errors_are_one_line(tmp_path):
    """Each run trains a new network, so a rerun (or a newer version's) overwrites the tiles
    the last one left instead of refusing them; a folder it cannot write is one line."""
    cfg = DemoConfig(out=tmp_path, volume="synthetic:2x256x256", train_shape=(2, 256, 256),
                     depth=2, base_filters=4, patch_size=64, batch_size=8, iterations=4)
    first = run_demo(cfg)
    second = run_demo(replace(cfg, iterations=6))  # other weights, same folder
    assert second.identical and second.n_tiles == first.n_tiles == 2
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    r = CliRunner().invoke(app, ["demo", "--out", str(blocked / "out")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("error:")
