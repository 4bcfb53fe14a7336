"""The job worker as a real process over pyzmq: real prediction jobs on a real mock VAST
server, events in order, late subscribers, spec errors, cancel, a killed worker restarted
with the resubmitted prediction byte-identical, and the `membrane jobs` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tifffile
from cli_process import CLI
from predict_support import folder_bytes, tile_keys

from membrane_py.jobs.channel import DEAD_AFTER_S, address_path
from membrane_py.jobs.client import WorkerClient, WorkerError
from membrane_py.jobs.spec import SpecError
from membrane_py.predict.job import PredictJob
from mock_vast_server.launch import start_server

SHAPE = (4, 300, 400)  # 3 x 4 tiles of 128 px per section
ALL_TILES = {(z, r, c) for z in range(4) for r in range(3) for c in range(4)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(f"synthetic:{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}",
                      state_dir=tmp_path_factory.mktemp("vast_state")) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory):
    """A noise volume of 512 one-tile chunks: a prediction that runs for many seconds."""
    path = tmp_path_factory.mktemp("slow") / "noise.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 256, (8, 1024, 1024), np.uint8))
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = WorkerClient.start_local(tmp_path_factory.mktemp("worker"))
    yield c
    c.close(stop_worker=True)


def predict_spec(server, checkpoint, out) -> PredictJob:
    return PredictJob(checkpoint=str(checkpoint), source=f"vast://{server.host}:{server.port}",
                      out=str(out), tile=128, chunk=[2, 256, 256], margin=32)


def slow_spec(slow_source, checkpoint, out) -> dict:
    return PredictJob(checkpoint=str(checkpoint), source=str(slow_source), out=str(out),
                      tile=128, chunk=[1, 128, 128], margin=32, pyramid=False).to_dict()


def collect(client, job_id, timeout=120.0):
    """Live events of one job until its terminal event (from poll_events)."""
    events, deadline = [], time.monotonic() + timeout
    while not events or events[-1].kind not in ("done", "error"):
        assert time.monotonic() < deadline, f"job {job_id} did not end in {timeout} s"
        assert client.alive()
        events += [e for j, e in client.poll_events(200) if j == job_id]
    return events


@pytest.fixture(scope="module")
def reference(client, server, checkpoint, tmp_path_factory):
    """An uninterrupted prediction through the worker: its output folder, id and events."""
    out = tmp_path_factory.mktemp("reference")
    job_id = client.submit(predict_spec(server, checkpoint, out))
    return out, job_id, collect(client, job_id)


def test_job_events_arrive_in_order_ending_with_done(client, reference):
    out, job_id, events = reference
    assert job_id.startswith("predict-")
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and "error" not in kinds
    assert "artifact" in kinds  # the .vsvi descriptor
    done = [e.done for e in events if e.kind == "progress" and e.task == "predict"]
    assert done == sorted(done) and done[-1] == len(ALL_TILES)
    end = events[-1]
    assert end.data["state"] == "done" and end.data["result"]["tiles_written"] == len(ALL_TILES)
    assert "48 tiles written" in end.message
    assert tile_keys(out / "probability", 0) == ALL_TILES
    info = client.status(job_id)
    assert (info.state, info.kind, info.error, info.n_events) == ("done", "predict", None,
                                                                   len(events))
    assert info.result == end.data["result"] and info.spec["out"] == str(out)
    assert job_id in [j.id for j in client.jobs()]


def test_late_subscriber_gets_past_events(client, reference):
    _, job_id, events = reference
    assert client.past_events(job_id) == events
    assert client.past_events(job_id, since=5) == events[5:]
    late = WorkerClient.connect(client.address_file)  # another process would do the same
    try:
        assert late.alive() and late.process is None
        assert list(late.watch(job_id)) == events
        assert late.status(job_id).state == "done"
    finally:
        late.close()
    # by its control URL and token: the events URL comes from a ping
    by_url = WorkerClient.connect(f"{client.ping()['control']}#{client.token}")
    try:
        assert by_url.alive() and by_url.past_events(job_id) == events
    finally:
        by_url.close()


def test_requests_need_the_token_of_the_private_address_file(client):
    if os.name == "posix":
        assert client.address_file.stat().st_mode & 0o777 == 0o600
    stranger = WorkerClient.connect(client.ping()["control"])  # another user: no token
    try:
        assert stranger.alive()  # ping answers without the token
        with pytest.raises(WorkerError, match="wrong or missing token"):
            stranger.jobs()
        with pytest.raises(WorkerError, match="wrong or missing token"):
            stranger.submit({"kind": "predict", "checkpoint": "m.pt"})
    finally:
        stranger.close()
    assert client.jobs()


def test_bad_spec_and_unknown_job_are_one_line_errors(client, checkpoint):
    before = len(client.jobs())
    with pytest.raises(SpecError, match="unknown key 'treshold'") as e:
        client.submit({"kind": "predict", "checkpoint": str(checkpoint), "treshold": 0.5})
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="unknown job kind 'predcit'"):
        client.submit({"kind": "predcit"})
    with pytest.raises(SpecError, match="multiples of the tile size"):
        client.submit({"kind": "predict", "checkpoint": "m.pt", "chunk": [1, 100, 100]})
    assert len(client.jobs()) == before  # nothing was queued
    with pytest.raises(ValueError, match="no job 'nope'"):
        client.status("nope")
    with pytest.raises(WorkerError, match="start one with `membrane worker`"):
        WorkerClient.connect(address_path(client.address_file.parent.parent))


def test_cancel_running_and_queued_jobs(client, slow_source, checkpoint, tmp_path):
    running = client.submit(slow_spec(slow_source, checkpoint, tmp_path / "a"))
    queued = client.submit(slow_spec(slow_source, checkpoint, tmp_path / "b"))
    assert client.status(queued).state == "queued"
    client.cancel(queued)  # dropped at once, never started
    assert client.status(queued).state == "cancelled"
    assert [e.kind for e in client.past_events(queued)] == ["error"]
    events, deadline = [], time.monotonic() + 120
    while not any(e.data.get("written") for e in events):  # the first tiles are on disk
        assert time.monotonic() < deadline
        events += [e for j, e in client.poll_events(100) if j == running]
    late = WorkerClient.connect(client.address_file)  # joins mid-run, wants it all
    try:
        late.follow(running)
        client.cancel(running)
        events += collect(client, running)
        end = events[-1]
        assert (end.kind, end.data["state"]) == ("error", "cancelled")
        assert client.past_events(running) == events == collect(late, running)
    finally:
        late.close()
    info = client.status(running)
    assert info.state == "cancelled" and info.error and info.result is None
    kept = tile_keys(tmp_path / "a" / "probability", 0)
    assert 0 < len(kept) < 8 * 8 * 8  # partial outputs stay for a resumed run
    assert not (tmp_path / "b").exists()


def cli(*args, timeout=120):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_started_worker_ends_with_its_parent(tmp_path):
    local = WorkerClient.start_local(tmp_path)
    assert local.ping()["pid"] == local.process.pid
    local.process.stdin.close()  # what the OS does when the starting process dies
    assert local.process.wait(30) == 0
    assert not (tmp_path / "worker.json").exists() and not local.alive()
    local.close()


def test_cli_worker_starts_answers_and_stops_on_ctrl_c(tmp_path):
    state = tmp_path / "state"
    worker = subprocess.Popen([*CLI, "worker", "--state-dir", str(state)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = worker.stdout.readline()
        assert first.strip() == f"worker listening; address file: {state / 'worker.json'}"
        listed = cli("jobs", "list", "--worker", str(state))
        assert (listed.returncode, listed.stdout) == (0, "no jobs\n"), listed.stderr
        again = cli("worker", "--state-dir", str(state))  # one worker per state folder
        assert again.returncode == 2 and "a worker is already running" in again.stderr
    finally:
        if os.name == "posix":
            worker.send_signal(signal.SIGINT)  # Ctrl-C
        else:
            worker.terminate()
        worker.wait(30)
    if os.name == "posix":
        assert worker.returncode == 130 and not (state / "worker.json").exists()


def test_cli_jobs_submit_list_watch_cancel(client, server, checkpoint, slow_source, tmp_path):
    address = str(client.address_file)
    job_file = tmp_path / "job.json"
    job_file.write_text(predict_spec(server, checkpoint, tmp_path / "out").to_json())
    run = cli("jobs", "submit", str(job_file), "--watch", "--worker", address)
    assert run.returncode == 0, run.stderr
    job_id, summary = run.stdout.splitlines()[:2]
    assert job_id.startswith("predict-") and "48 tiles written" in summary
    assert "predict" in run.stderr  # the progress bar
    assert client.status(job_id).state == "done"

    slow = client.submit(slow_spec(slow_source, checkpoint, tmp_path / "slow"))
    listed = cli("jobs", "list", "--worker", address)
    rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()}
    assert rows[job_id] == "done" and rows[slow] in ("queued", "running")
    cancel = cli("jobs", "cancel", slow, "--worker", address)
    assert cancel.returncode == 0 and cancel.stdout.startswith(f"{slow}: ")
    watch = cli("jobs", "watch", slow, "--worker", address)
    assert watch.returncode == 130 and "cancelled" in watch.stderr
    assert "submitting the job again continues from there" in watch.stderr
    assert client.status(slow).state == "cancelled"

    none = cli("jobs", "list", "--worker", str(tmp_path / "elsewhere"))
    assert none.returncode == 2
    assert none.stderr.strip().splitlines() == [
        f"error: no worker running (no address file {tmp_path / 'elsewhere' / 'worker.json'});"
        " start one with `membrane worker`"]


def test_killed_worker_restarts_and_resubmitted_prediction_is_identical(
        client, reference, server, checkpoint, tmp_path):
    """Runs last: it kills the module's worker (the client restarts it)."""
    local = client
    observer = WorkerClient.connect(local.address_file)  # sees the heartbeat only
    try:
        spec = predict_spec(server, checkpoint, tmp_path / "out")
        local.submit(spec)
        deadline = time.monotonic() + 120
        while len(tile_keys(tmp_path / "out" / "probability", 0)) < 8:  # one chunk written
            assert time.monotonic() < deadline, "the worker wrote no chunk in 120 s"
            time.sleep(0.005)
        local.process.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        killed_at = time.monotonic()
        local.process.wait()
        assert len(tile_keys(tmp_path / "out" / "probability", 0)) < len(ALL_TILES)
        assert not local.alive()
        with pytest.raises(WorkerError, match="exited"):
            local.jobs()

        old_pid = local.process.pid
        local.restart()
        assert local.alive() and local.process.pid != old_pid and local.jobs() == []
        assert local.address_file.is_file()
        job_id = local.submit(spec.resumed())  # predict: the same spec skips written tiles
        end = list(local.watch(job_id))[-1]
        assert end.kind == "done", end.message
        assert end.data["result"]["tiles_resumed"] >= 8
        assert folder_bytes(tmp_path / "out") == folder_bytes(reference[0])

        while observer.alive():  # without a process handle: the heartbeat stops
            assert time.monotonic() - killed_at < DEAD_AFTER_S + 10
            time.sleep(0.1)
        assert time.monotonic() - killed_at >= DEAD_AFTER_S / 2  # not at once: by timeout
    finally:
        observer.close()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="pauses the worker with SIGSTOP")
def test_a_stalled_worker_is_waited_for_by_the_client_holding_its_process(tmp_path):
    """A busy machine can stall the worker past the heartbeat tolerance. The client that
    started it sees its exit at once, so it waits instead of failing the job; a client that
    only connected can tell a stall from death by silence alone and gives up."""
    local = WorkerClient.start_local(tmp_path)
    observer = WorkerClient.connect(local.address_file)
    pid = local.process.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(DEAD_AFTER_S + 1)
        assert local.alive() and not observer.alive()
        os.kill(pid, signal.SIGCONT)
        assert local.jobs() == []  # answers again
        deadline = time.monotonic() + 10
        while not observer.alive():
            assert time.monotonic() < deadline, "the heartbeat did not come back"
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
        observer.close()
        local.close(stop_worker=True)
