"""A rerun into an existing output folder resumes only the same job: another model or other
pixel-changing options raise JobMismatchError, overwrite replaces the tiles (through a real
mock VAST server)."""

from __future__ import annotations

import json

import pytest
import torch
from predict_support import folder_bytes, tiny_checkpoint

from membrane_py.events import Cancelled, CancelToken
from membrane_py.predict.identity import IDENTITY_FILE, JobMismatchError
from membrane_py.predict.job import PredictJob
from membrane_py.predict.runner import run_prediction
from membrane_py.train.checkpoint import weights_sha256
from mock_vast_server.launch import start_server

SHAPE = (2, 200, 260)  # 2 x 2 x 3 tiles of 128 px
N_TILES = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(f"synthetic:{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}",
                      state_dir=tmp_path_factory.mktemp("state")) as srv:
        yield srv


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return tiny_checkpoint(folder / "a.pt", seed=0), tiny_checkpoint(folder / "b.pt", seed=1)


def job_for(server, checkpoint, out, **kw) -> PredictJob:
    base = dict(checkpoint=str(checkpoint), source=f"vast://{server.host}:{server.port}",
                out=str(out), tile=128, chunk=[1, 256, 256], margin=32, pyramid=False,
                skip_blank=False)
    return PredictJob(**{**base, **kw})


def _weights_digest(path) -> str:
    """The digest of the weights as stored in the file (read without our loader)."""
    return weights_sha256(torch.load(path, weights_only=True)["state_dict"])


def _identity(out) -> dict:
    return json.loads((out / IDENTITY_FILE).read_text())


def test_other_model_is_refused_same_model_resumes_overwrite_replaces(server, models,
                                                                      tmp_path):
    a, b = models
    first = run_prediction(job_for(server, a, tmp_path))
    assert first.tiles_written == N_TILES
    tiles_a = folder_bytes(tmp_path / "probability")
    assert _identity(tmp_path)["pixels"]["model"] == _weights_digest(a)

    with pytest.raises(JobMismatchError) as info:
        run_prediction(job_for(server, b, tmp_path))
    message = str(info.value)
    assert f"model {a} " in message and f"-> {b} " in message and "--overwrite" in message
    assert "\n" not in message
    assert folder_bytes(tmp_path / "probability") == tiles_a  # nothing was touched

    again = run_prediction(job_for(server, a, tmp_path, prefetch=0))  # prefetch: no pixels
    assert again.tiles_resumed == N_TILES and again.tiles_written == 0

    replaced = run_prediction(job_for(server, b, tmp_path, overwrite=True))
    assert replaced.tiles_written == N_TILES
    assert folder_bytes(tmp_path / "probability") != tiles_a
    identity = _identity(tmp_path)
    assert identity["pixels"]["model"] == _weights_digest(b)
    assert identity["checkpoint"] == str(b) and not identity["overwrite_pending"]
    assert run_prediction(job_for(server, b, tmp_path)).tiles_resumed == N_TILES


def test_pixel_options_are_part_of_the_identity(server, models, tmp_path):
    a, _ = models
    run_prediction(job_for(server, a, tmp_path))
    with pytest.raises(JobMismatchError, match=r"margin 32 -> 48; mip 0 -> 1"):
        run_prediction(job_for(server, a, tmp_path, margin=48, mip=1))
    with pytest.raises(JobMismatchError, match=r"outputs \['probability'\] -> "):
        run_prediction(job_for(server, a, tmp_path, outputs=["classes"]))


def test_interrupted_overwrite_must_be_finished_by_overwrite(server, models, tmp_path):
    a, b = models
    run_prediction(job_for(server, a, tmp_path))
    token = CancelToken()

    def cancel_after_first_write(event) -> None:
        if event.data.get("written", 0) > 0:
            token.cancel()

    with pytest.raises(Cancelled):
        run_prediction(job_for(server, b, tmp_path, overwrite=True, prefetch=0),
                       progress=cancel_after_first_write, cancel=token)
    assert _identity(tmp_path)["overwrite_pending"]
    for model in (a, b):  # old and new tiles are mixed: neither may resume
        with pytest.raises(JobMismatchError, match="overwrite run .* was interrupted"):
            run_prediction(job_for(server, model, tmp_path))
    assert run_prediction(job_for(server, b, tmp_path, overwrite=True)).tiles_written == N_TILES
    assert not _identity(tmp_path)["overwrite_pending"]


def test_unreadable_identity_is_refused(server, models, tmp_path):
    a, _ = models
    (tmp_path / IDENTITY_FILE).write_text("{ not json")
    with pytest.raises(JobMismatchError, match="is unreadable"):
        run_prediction(job_for(server, a, tmp_path))
