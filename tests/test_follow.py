"""Following VAST's view through a real mock VAST server: nearest tiles first, a moved view
drops stale work, written tiles are never recomputed, zoom picks the mip, Ctrl-C exits 130."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from cli_process import CLI
from predict_support import loading_server, tile_keys

from membrane_py.events import Cancelled, CancelToken, Event
from membrane_py.predict.follow import FollowJob, View, displayed_mip, run_follow, view_order
from membrane_py.predict.identity import JobMismatchError
from membrane_py.predict.job import PredictJob, RegionSpec
from membrane_py.predict.runner import run_prediction
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.tiles import tile_path
from mock_vast_server.launch import start_server

SPEC = "synthetic:24x512x512"
TILE = 128


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with loading_server(SPEC, tmp_path_factory) as srv:
        yield srv


def follow_job(server, checkpoint, out, **kw) -> FollowJob:
    predict = PredictJob(checkpoint=str(checkpoint), source=f"vast://{server.host}:{server.port}",
                         out=str(out), tile=TILE, margin=32, chunk=[1, TILE, TILE],
                         skip_blank=False, load_in_vast=True)
    base = dict(predict=predict, viewport=[256, 256], sections=2, margin=0, poll=0.01,
                max_seconds=120.0)
    return FollowJob(**{**base, **kw})


def look(server, x: int, y: int, z: int, zoom: int = 0) -> None:
    with VastClient(server.host, server.port) as client:
        client.set_view_coordinates(x, y, z)
        client.set_view_zoom(zoom)


def written(events: list[Event]) -> list[tuple[int, int, int]]:
    return [tuple(e.data["tile"]) for e in events
            if e.kind == "progress" and e.data.get("stage") == "written"]


def views(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "log" and "queued" in e.data]


def test_moved_view_is_predicted_first_and_stale_work_dropped(server, checkpoint, tmp_path):
    look(server, 128, 128, 2)  # tiles rows 0-1, cols 0-1 of sections 0..4 (20 tiles)
    events: list[Event] = []
    token = CancelToken()
    mover = VastClient(server.host, server.port).connect()

    def on_event(e: Event) -> None:
        events.append(e)
        if len(written(events)) == 1 and len(views(events)) == 1 and e.kind == "progress" \
                and e.data["stage"] == "written":
            mover.set_view_coordinates(384, 384, 20)  # far away: rows 2-3, cols 2-3
        seen = views(events)
        if len(seen) == 2:
            after = written(events[events.index(seen[1]):])
            if len(after) == seen[1].data["queued"]:
                token.cancel()

    try:
        with pytest.raises(Cancelled):
            run_follow(follow_job(server, checkpoint, tmp_path), on_event, token)
    finally:
        mover.close()
    first, second = views(events)
    assert (first.data["queued"], first.data["visible"]) == (20, 4)
    before = written(events[:events.index(second)])
    after = written(events[events.index(second):])
    assert before[0][0] == 2 and before[0][1:] in {(0, 0), (0, 1), (1, 0), (1, 1)}
    # the new view's visible tiles come first, then the sections nearest to it
    assert set(after[:4]) == {(20, r, c) for r in (2, 3) for c in (2, 3)}
    assert [abs(z - 20) for z, _, _ in after] == sorted(abs(z - 20) for z, _, _ in after)
    assert set(after) == {(z, r, c) for z in range(18, 23) for r in (2, 3) for c in (2, 3)}
    # the old view's queued tiles were dropped: none of them was written after the move
    assert second.data["dropped"] == 20 - len(before)
    on_disk = tile_keys(tmp_path / "mip0" / "probability", 0)
    assert on_disk == set(before) | set(after)
    # the layer was loaded and refreshed as tiles landed
    with VastClient(server.host, server.port) as client:
        assert "membrane prediction (mip 0)" in client.get_layer_names()
    assert "REFRESHLAYERREGION" in server.stderr

    # each tile equals the same tile of `membrane predict --chunk T,T,1` with the same options
    ref = run_prediction(PredictJob(
        checkpoint=str(checkpoint), source=f"vast://{server.host}:{server.port}",
        out=str(tmp_path / "ref"), tile=TILE, margin=32, chunk=[1, TILE, TILE],
        skip_blank=False, pyramid=False,
        region=RegionSpec(mode="box", box=[256, 511, 256, 511, 18, 22])))
    assert ref.tiles_written == len(after)
    for z, r, c in after:
        assert tile_path(tmp_path / "mip0" / "probability", 0, z, r, c).read_bytes() == \
            tile_path(tmp_path / "ref" / "probability", 0, z, r, c).read_bytes()

    # following the same view again recomputes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "mip0").rglob("*.png")}
    again = run_follow(follow_job(server, checkpoint, tmp_path, max_seconds=1.0))
    assert again.tiles_written == 0 and again.views == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "mip0").rglob("*.png")} == stamps


def test_zoomed_out_view_predicts_at_the_displayed_mip(server, checkpoint, tmp_path):
    look(server, 256, 256, 5, zoom=-1)
    token = CancelToken()
    events: list[Event] = []

    def on_event(e: Event) -> None:
        events.append(e)
        if written(events):
            token.cancel()

    with pytest.raises(Cancelled):
        run_follow(follow_job(server, checkpoint, tmp_path, sections=0), on_event, token)
    assert views(events)[0].data["mip"] == 1
    z, r, c = written(events)[0]
    assert z == 5 and (z, r, c) in tile_keys(tmp_path / "mip1" / "probability", 1)
    look(server, 256, 256, 5, zoom=0)


def test_a_folder_of_other_tiles_is_refused_with_what_follow_can_do(server, checkpoint,
                                                                    tmp_path):
    look(server, 256, 256, 5)
    token = CancelToken()

    def first_tile(e: Event) -> None:
        if e.kind == "progress" and e.data.get("stage") == "written":
            token.cancel()

    with pytest.raises(Cancelled):
        run_follow(follow_job(server, checkpoint, tmp_path, sections=0), first_tile, token)
    other = follow_job(server, checkpoint, tmp_path, sections=0)
    other.predict.tta = 2
    with pytest.raises(JobMismatchError) as info:
        run_follow(other)
    said = str(info.value)
    assert "tta" in said and said.endswith("follow into another folder (--out)"), said
    assert "overwrite" not in said


def test_a_vast_without_refreshlayerregion_gets_the_layer_reloaded(checkpoint, tmp_path):
    with start_server("synthetic:4x256x256", state_dir=tmp_path / "state", allow_load=[tmp_path],
                      extra_args=["--without", "REFRESHLAYERREGION"]) as old_vast:
        look(old_vast, 128, 128, 1)
        token, events = CancelToken(), []

        def on_event(e: Event) -> None:
            events.append(e)
            if len(written(events)) == views(events)[0].data["queued"]:
                token.cancel()

        with pytest.raises(Cancelled):
            run_follow(follow_job(old_vast, checkpoint, tmp_path / "out", sections=0),
                       on_event, token)
        log = old_vast.stderr
        with VastClient(old_vast.host, old_vast.port) as client:
            names = client.get_layer_names()
    assert "answered with error 1" in log  # REFRESHLAYERREGION was tried, then reloads
    descriptor = str((tmp_path / "out" / "mip0" / "probability.vsvi").resolve())
    assert log.count(f"LOADLAYER {descriptor}") >= 2
    assert names.count("membrane prediction (mip 0)") == 1
    assert not [e for e in events if e.kind == "warning"]


def test_ctrl_c_exits_130_and_keeps_what_was_written(server, checkpoint, tmp_path):
    look(server, 100, 100, 3)
    cmd = [*CLI, "follow",
           str(checkpoint), "--vast", f"vast://{server.host}:{server.port}", "--out",
           str(tmp_path), "--tile", str(TILE), "--context", "32", "--viewport", "256,256",
           "--sections", "3", "--margin", "2", "--no-load", "--max-seconds", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not tile_keys(tmp_path / "mip0" / "probability", 0) and proc.poll() is None:
        assert time.monotonic() < deadline, "membrane follow wrote no tile in 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130, proc.stderr.read().decode()
    said = proc.stderr.read().decode()
    assert "interrupted" in said and "rerunning the same command continues from there" in said
    assert tile_keys(tmp_path / "mip0" / "probability", 0)


def test_view_order_and_spec():
    order = view_order(View(x=300, y=100, z=4, mip=1), (6, 128, 256), 32, (64, 64), 1, 1)
    keys = [k for _, k in order]
    assert len(keys) == len(set(keys))
    # centre (150, 50) at mip 1: visible x 118..181 -> cols 3..5, y 18..81 -> rows 0..2
    visible = {(4, r, c) for r in range(3) for c in range(3, 6)}
    assert {k for g, k in order if g == 0} == visible and keys[0] == (4, 1, 4)
    assert {k for g, k in order if g == 1} == {(z, r, c) for z in (3, 5) for _, r, c in visible}
    assert {k[1:] for g, k in order if g == 2} == \
        {(r, c) for r in range(4) for c in range(2, 7)} - {k[1:] for k in visible}
    assert [g for g, _ in order] == sorted(g for g, _ in order)
    assert displayed_mip(-3, 1, 10) == 3 and displayed_mip(5, 1, 10) == 0
    assert displayed_mip(-9, 2, 3) == 2
    job = FollowJob(predict=PredictJob(checkpoint="m.pt", source="vast"), mip=2)
    assert FollowJob.from_json(job.to_json()) == job
    with pytest.raises(ValueError, match="follow needs VAST"):
        FollowJob(predict=PredictJob(checkpoint="m.pt", source="synthetic"))
    with pytest.raises(ValueError, match="viewport"):
        FollowJob(predict=PredictJob(checkpoint="m.pt"), viewport=[0, 10])
