"""Whole-volume prediction on a real Dask LocalCluster (worker processes, one thread each)
through a real mock VAST server: byte-identical to the single-process runner, also when a
worker process dies mid-run, when the run is cancelled and resumed, and on rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from distributed import Client, LocalCluster
from predict_support import folder_bytes, tile_keys
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.distributed.cluster import connect
from membrane_py.events import Cancelled, CancelToken
from membrane_py.jobs import run
from membrane_py.jobs.registry import spec_from_dict
from membrane_py.predict.job import PredictJob, parse_scheduler
from membrane_py.predict.runner import run_prediction

TILE, MARGIN, CHUNK = 128, 32, [2, 128, 128]  # 8x256x256 volume: 16 blocks, 32 tiles
ALL_TILES = {(z, r, c) for z in range(8) for r in range(2) for c in range(2)}


@pytest.fixture(scope="module")
def cluster():
    """A running cluster the tests reach by address (as `--scheduler tcp://...`)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as c, Client(c) as client:
        yield c.scheduler_address, client


def job_for(vast_server, checkpoint, out, **kw) -> PredictJob:
    base = dict(checkpoint=str(checkpoint), source=f"vast://{vast_server.host}:{vast_server.port}",
                out=str(out), tile=TILE, chunk=CHUNK, margin=MARGIN,
                outputs=["probability", "classes"], zarr=True, backend="torch")
    return PredictJob(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(vast_server, checkpoint, tmp_path_factory):
    """The single-process runner's output, the reference for every Dask run."""
    out = tmp_path_factory.mktemp("reference")
    result = run_prediction(job_for(vast_server, checkpoint, out))
    assert result.tiles_written == len(ALL_TILES) and result.pyramid_tiles > 0
    return folder_bytes(out)


def test_cli_on_a_running_cluster_is_byte_identical(reference, cluster, vast_server, checkpoint,
                                                    tmp_path):
    address, client = cluster
    args = ["predict", str(checkpoint), "--source", f"vast://{vast_server.host}:{vast_server.port}",
            "--out", str(tmp_path), "--outputs", "probability,classes", "--zarr",
            "--backend", "torch", "--tile", str(TILE), "--chunk", ",".join(map(str, CHUNK[::-1])),
            "--margin", str(MARGIN),
            "--scheduler", address, "--save-job", str(tmp_path.parent / "job.json")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"{len(ALL_TILES)} tiles written" in r.output
    saved = (tmp_path.parent / "job.json").read_text()
    assert spec_from_dict(json.loads(saved)).scheduler == address
    assert folder_bytes(tmp_path) == reference
    shipped = client.run(lambda dask_worker: sorted(
        p.name for p in Path(dask_worker.local_directory).glob("model-*")))
    assert len(shipped) == 2 and all(len(files) == 1 for files in shipped.values())


def test_local_scheduler_starts_worker_processes_with_one_thread():
    with connect("local:2") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())
        assert len(set(client.run(os.getpid).values())) == 2
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")


def test_worker_killed_mid_run_still_identical(reference, cluster, vast_server, checkpoint,
                                               tmp_path):
    address, client = cluster
    before = set(client.scheduler_info(n_workers=-1)["workers"])
    killed: list[tuple[str, int]] = []

    def kill_a_busy_worker(event):
        if killed or event.kind != "progress" or not event.data.get("written"):
            return
        busy = [w for w, keys in client.processing().items() if keys] or sorted(before)
        client.run(os._exit, 1, workers=[busy[0]], on_error="ignore")
        killed.append((busy[0], event.done))

    events = []
    result = run(job_for(vast_server, checkpoint, tmp_path, scheduler=address),
                 progress=lambda e: (events.append(e), kill_a_busy_worker(e)))
    assert killed and killed[0][1] < len(ALL_TILES)  # killed before the end
    assert killed[0][0] not in client.scheduler_info(n_workers=-1)["workers"]
    assert result.tiles_written + result.tiles_resumed >= len(ALL_TILES)
    last = [e for e in events if e.kind == "progress"][-1]
    assert last.done == last.total == len(ALL_TILES) and last.data["pyramid"] > 0
    assert folder_bytes(tmp_path) == reference

    again = run(job_for(vast_server, checkpoint, tmp_path, scheduler=address))
    assert (again.tiles_written, again.tiles_resumed) == (0, len(ALL_TILES))
    assert folder_bytes(tmp_path) == reference


def test_cancel_then_resume_on_the_cluster(reference, cluster, vast_server, checkpoint, tmp_path):
    address, _ = cluster
    token = CancelToken()

    def cancel_after_first_write(event):
        if event.kind == "progress" and event.data.get("written"):
            token.cancel()

    job = job_for(vast_server, checkpoint, tmp_path, scheduler=address)
    with pytest.raises(Cancelled):
        run(job, progress=cancel_after_first_write, cancel=token)
    assert 0 < len(tile_keys(tmp_path / "probability", 0)) < len(ALL_TILES)
    result = run(job)
    assert result.tiles_resumed > 0 and result.tiles_written < len(ALL_TILES)
    assert folder_bytes(tmp_path) == reference


def test_scheduler_spec_and_errors(vast_server, checkpoint, tmp_path):
    assert parse_scheduler("local") == ("local", None)
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", None)
    for bad in ("local:0", "local:x", "tcp://nohost", "slurm"):
        with pytest.raises(ValueError, match="scheduler"):
            parse_scheduler(bad)
    r = CliRunner().invoke(app, ["predict", str(checkpoint), "--scheduler", "locl"])
    assert r.exit_code == 2 and "local:N" in r.output
    job = job_for(vast_server, checkpoint, tmp_path, scheduler="local:1")
    with pytest.raises(ValueError, match="membrane_py.jobs.run"):
        run_prediction(job)
