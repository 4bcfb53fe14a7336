"""Several models in one read: each model's folder equals its own single-model run, the EM
is read once, each model gets its own VAST layer, and `--model` repeats on the CLI."""

from __future__ import annotations

import pytest
from predict_support import folder_bytes, tile_keys, tiny_checkpoint
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.predict.job import PredictJob
from membrane_py.predict.runner import run_prediction
from membrane_py.predict.vastload import RECORD_FILE
from membrane_py.vastapi.client import VastClient
from mock_vast_server.launch import start_server

SPEC = "synthetic:4x300x400"
TILE, MARGIN = 128, 32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return (tiny_checkpoint(folder / "membranes.pt", seed=1),
            tiny_checkpoint(folder / "mito.pt", ["other", "mito"], seed=2))


def job(checkpoint, out, **kw) -> PredictJob:
    return PredictJob(checkpoint=checkpoint, source=SPEC, out=str(out), tile=TILE,
                      chunk=[2, 256, 256], margin=MARGIN, **kw)


def test_each_model_matches_its_own_single_model_run(models, tmp_path):
    a, b = models
    # the single runs named as the multi-model run names each model's layer
    single = [run_prediction(job(str(m), tmp_path / f"single_{m.stem}",
                                 layer_name=f"membrane prediction ({m.stem})")) for m in models]
    both = run_prediction(job([str(a), str(b)], tmp_path / "both"))
    for m, alone in zip(models, single, strict=True):
        mine = folder_bytes(tmp_path / "both" / m.stem)
        assert tile_keys(tmp_path / "both" / m.stem / "probability", 0), f"{m.stem} wrote nothing"
        assert mine == folder_bytes(alone.out), f"{m.stem} differs from its single-model run"
    # different models, different pixels: the comparison above could fail
    assert folder_bytes(tmp_path / "both" / a.stem) != folder_bytes(tmp_path / "both" / b.stem)
    assert both.megabytes_read == pytest.approx(single[0].megabytes_read)  # one read, not two
    assert both.tiles_total == sum(s.tiles_total for s in single)
    assert both.tiles_written == sum(s.tiles_written for s in single)
    assert [p.parent.name for p in both.descriptors] == ["membranes", "mito"]
    again = run_prediction(job([str(a), str(b)], tmp_path / "both"))  # resumes, reads nothing
    assert again.tiles_written == 0 and again.megabytes_read == 0


def test_each_model_gets_its_own_vast_layer_and_cli_repeats_model(models, tmp_path):
    a, b = models
    with start_server(SPEC, state_dir=tmp_path / "state", allow_load=[tmp_path]) as srv:
        vast = f"vast://{srv.host}:{srv.port}"
        r = CliRunner().invoke(app, [
            "predict", "--model", str(a), "--model", str(b), "--source", vast, "--load",
            "--out", str(tmp_path / "out"), "--tile", str(TILE), "--chunk", "256,256,2",
            "--margin", str(MARGIN), "--box", "0,255,0,127,1,2", "--layer-name", "pred"])
        assert r.exit_code == 0, r.output
        with VastClient(srv.host, srv.port) as client:
            names = client.get_layer_names()
        assert {"pred (membranes)", "pred (mito)"} <= set(names), names
        for m in (a, b):
            assert (tmp_path / "out" / m.stem / RECORD_FILE).is_file()
            assert tile_keys(tmp_path / "out" / m.stem / "probability", 0) == {
                (z, 0, c) for z in (1, 2) for c in (0, 1)}
    bad = CliRunner().invoke(app, ["predict", "--source", SPEC])
    assert bad.exit_code == 2 and "give the model" in bad.output
    same = CliRunner().invoke(app, ["predict", "--model", str(a), "--model",
                                    str(tmp_path / "membranes.onnx"), "--source", SPEC])
    assert same.exit_code == 2 and "two models are named 'membranes'" in same.output


def test_old_single_model_job_files_still_load(tmp_path):
    text = job("net.pt", tmp_path).to_json()
    assert '"checkpoint": "net.pt"' in text
    assert PredictJob.from_json(text).checkpoints == ["net.pt"]
    two = job(["a.pt", "b.onnx"], tmp_path)
    assert PredictJob.from_json(two.to_json()) == two
    assert [j.out for j in two.per_model()] == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(ValueError, match="drop the scheduler"):
        job(["a.pt", "b.pt"], tmp_path, scheduler="local")
