"""Batch-norm statistics adapted to the EM being predicted (AdaBN): the statistics are the
sample's, the weights stay, both engines run the adapted network, a prediction folder never
mixes adapted and plain tiles, and misuse ends in one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from predict_support import tiny_checkpoint
from typer.testing import CliRunner

from membrane_py.augment.preprocess import preprocess
from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.infer.batchnorm import adapt_batch_norm, fit_to_multiple, settle_adapt_bn
from membrane_py.infer.engine import load_predictor
from membrane_py.predict.identity import IDENTITY_FILE, JobMismatchError
from membrane_py.predict.job import PredictJob
from membrane_py.predict.runner import run_prediction
from membrane_py.train.checkpoint import load_checkpoint, save_checkpoint
from membrane_py.volumes.synthetic import make_synthetic


@pytest.fixture(scope="module")
def bn_model(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("bn") / "bn.pt", norm="batch", seed=3)


@pytest.fixture(scope="module")
def em():
    return make_synthetic((3, 64, 64), seed=5).em


def test_adapted_statistics_are_the_samples_and_the_weights_stay(bn_model, em):
    ck = load_checkpoint(bn_model)
    adapted = adapt_batch_norm(ck, em)
    net = ck.build_model()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        net(torch.from_numpy(preprocess(em, ck.preprocess_config)[:, None]))
    x = seen[0]  # the three sections went through in one pass, as in the adaptation
    name = next(n for n, m in net.named_modules() if m is first) + ".running_mean"
    np.testing.assert_allclose(adapted.state_dict[name], x.mean((0, 2, 3)), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(adapted.state_dict[name.replace("mean", "var")],
                               x.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.equal(adapted.state_dict[name], ck.state_dict[name])
    for key, value in ck.state_dict.items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(adapted.state_dict[key], value), key
    assert adapted.digest() != ck.digest() == load_checkpoint(bn_model).digest()


def test_both_engines_run_the_adapted_network(bn_model, em):
    plain = load_predictor(bn_model, backend="torch", device="cpu", precision="fp32")
    runs = {b: load_predictor(bn_model, backend=b, device="cpu", precision="fp32",
                              adapt_bn=lambda: em) for b in ("torch", "onnx")}
    out = {b: p.predict(em) for b, p in runs.items()}
    np.testing.assert_allclose(out["torch"], out["onnx"], atol=1e-4)
    assert np.abs(out["torch"] - plain.predict(em)).max() > 1e-3
    assert runs["torch"].model_sha256 == runs["onnx"].model_sha256 != plain.model_sha256


def test_a_folder_never_mixes_adapted_and_plain_tiles(bn_model, tmp_path):
    job = dict(checkpoint=str(bn_model), source="synthetic:2x96x96", out=str(tmp_path),
               chunk=[2, 64, 64], tile=64, margin=16, device="cpu")
    result = run_prediction(PredictJob(**job, adapt_bn=True))
    assert result.tiles_written > 0
    assert json.loads((tmp_path / IDENTITY_FILE).read_text())["pixels"]["adapt_bn"] is True
    with pytest.raises(JobMismatchError, match="adapt_bn"):
        run_prediction(PredictJob(**job))
    again = run_prediction(PredictJob(**job, adapt_bn=True))
    assert again.tiles_written == 0  # the same job resumes: nothing left to do


def test_any_image_size_adapts(bn_model):
    """Sections whose sides are not multiples of 2 ** depth (FIB-25's 250^2) are cut to one;
    sides shorter than it are mirrored up to it."""
    assert fit_to_multiple(np.zeros((250, 250), np.uint8), 16).shape == (240, 240)
    assert fit_to_multiple(np.arange(6, dtype=np.uint8).reshape(2, 3), 4).shape == (4, 4)
    ck = load_checkpoint(bn_model)
    m = ck.model_config.multiple
    odd = [np.random.default_rng(i).integers(0, 255, (2 * m + 1, 3 * m - 1), np.uint8)
           for i in range(3)] + [np.full((1, m + 2), v, np.uint8) for v in (90, 110)]
    adapted = adapt_batch_norm(ck, odd)
    assert adapted.digest() != ck.digest()


def test_misuse_ends_in_one_line(bn_model, em, tmp_path):
    plain = tiny_checkpoint(tmp_path / "plain.pt")  # no batch norm
    with pytest.raises(ValueError, match="no batch normalisation"):
        load_predictor(plain, device="cpu", adapt_bn=lambda: em)
    with pytest.raises(ValueError, match="8-bit"):
        adapt_batch_norm(load_checkpoint(bn_model), em.astype(np.float32))
    r = CliRunner().invoke(app, ["export-onnx", str(bn_model), str(tmp_path / "m.onnx"),
                                 "--no-check"])
    assert r.exit_code == 0, r.output
    with pytest.raises(ValueError, match="needs the .pt checkpoint"):
        load_predictor(tmp_path / "m.onnx", adapt_bn=lambda: em)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "m.onnx"), "--source",
                                 "synthetic:2x96x96", "--out", str(tmp_path / "o"),
                                 "--adapt-bn"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert ".pt checkpoint" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_network_that_validated_better_adapted_is_adapted_by_default(bn_model, tmp_path):
    """The checkpoint's choice (set by whole-section validation) is the default of predict,
    on one process and on a Dask cluster alike; --no-adapt-bn overrides it."""
    asks = tmp_path / "asks.pt"
    save_checkpoint(asks, replace(load_checkpoint(bn_model), adapt_bn=True))
    args = ["predict", str(asks), "--source", "synthetic:2x96x96", "--chunk", "64,64,2",
            "--tile", "64", "--margin", "16", "--device", "cpu"]

    def run(out, *more):
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / out), *more])
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / out / IDENTITY_FILE).read_text())["pixels"]

    assert run("default")["adapt_bn"] is True
    assert run("asked", "--adapt-bn")["adapt_bn"] is True
    assert "adapt_bn" not in run("plain", "--no-adapt-bn")  # the plain default, unrecorded
    assert same_files(tmp_path / "default", tmp_path / "asked") > 0
    assert not same_files(tmp_path / "default", tmp_path / "plain")
    assert run("dask", "--scheduler", "local:1")["adapt_bn"] is True
    assert same_files(tmp_path / "default", tmp_path / "dask") > 0
    assert settle_adapt_bn(None, bn_model) is False and settle_adapt_bn(True, bn_model)


def same_files(a, b) -> int:
    """How many tile files the folders share, when every one of them is byte-identical
    (0 when any differs)."""
    names = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert names == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    same = all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    return len(names) if same else 0


def test_evaluate_adapts_to_the_images(bn_model, em, tmp_path):
    for i, section in enumerate(em):
        write_png(tmp_path / f"s{i}.png", section)
    args = ["evaluate", str(bn_model), *(str(tmp_path / f"s{i}.png") for i in range(3)),
            "--device", "cpu"]
    plain = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "plain")])
    adapted = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "adapted"), "--adapt-bn"])
    assert plain.exit_code == adapted.exit_code == 0, plain.output + adapted.output
    assert "batch norm adapted to these images (asked)" in adapted.output
    assert "batch norm adapted" not in plain.output
    a = (tmp_path / "plain" / "s0_probability.png").read_bytes()
    b = (tmp_path / "adapted" / "s0_probability.png").read_bytes()
    assert a != b
