"""The state directory of real server processes: journaled segment tables, one server per dir."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from membrane_py.vastapi.protocol import Cmd, Grouped, decode_values, i32, text, u32
from mock_vast_server.launch import raw_request, start_server

SPEC = "synthetic:2x64x64"


def call(sock, cmd, params=()) -> Grouped:
    ok, payload = raw_request(sock, cmd, params)
    assert ok, f"command {cmd} failed"
    return Grouped.of(decode_values(payload))


def bulk(sock, cmd) -> bytes:
    ok, payload = raw_request(sock, cmd)
    assert ok, f"command {cmd} failed"
    return payload


def paint_layer(sock, name: str) -> int:
    nr = call(sock, Cmd.ADDNEWLAYER, [i32(2), i32(-1), text(name)]).uints[0]
    call(sock, Cmd.SETAPILAYERSENABLED, [u32(1)])
    call(sock, Cmd.SETSELECTEDAPILAYERNR, [i32(nr)])
    return nr


def table_files(state: Path, name: str) -> tuple[Path, Path]:
    """(snapshot, journal) of the segmentation layer called ``name``."""
    doc = json.loads((state / "state.json").read_text())
    uid = next(la["uid"] for la in doc["layers"] if la["name"] == name)
    return state / f"segments_{uid}.json", state / f"segments_{uid}.journal"


def add(sock, name: str) -> int:
    return call(sock, Cmd.ADDSEGMENT, [u32(0), u32(0), text(name)]).uints[0]


def test_added_segments_survive_sigkill(tmp_path):
    state = tmp_path / "state"
    with start_server(SPEC, state_dir=state) as srv:
        s = srv.connect()
        paint_layer(s, "cells")
        ids = [add(s, f"cell {k}") for k in range(300)]
        folder = call(s, Cmd.ADDSEGMENT, [u32(ids[10]), u32(1), text("child of 10")]).uints[0]
        call(s, Cmd.SETSEGMENTNAME, [u32(ids[5]), text("renamed")])
        srv.proc.kill()  # SIGKILL: no shutdown handler runs
        srv.proc.wait()
        s.close()
    with start_server(SPEC, state_dir=state) as srv:
        s = srv.connect()
        assert call(s, Cmd.GETNUMBEROFSEGMENTS).uints == [302]
        names = bulk(s, Cmd.GETALLSEGMENTNAMES)[4:].split(b"\0")[:-1]
        assert names[ids[0]] == b"cell 0" and names[ids[-1]] == b"cell 299"
        assert names[ids[5]] == b"renamed" and names[folder] == b"child of 10"
        raw = bulk(s, Cmd.GETALLSEGMENTDATA)
        rec = np.frombuffer(raw, "<u4", offset=4).reshape(struct.unpack_from("<I", raw)[0], 17)
        # the top level is one chain 1 -> 2 -> ... -> 300 and 301 hangs below segment 11
        assert list(rec[ids, 9]) == ids[1:] + [0]  # next
        assert list(rec[ids, 8]) == [0] + ids[:-1]  # prev
        assert rec[folder, 6] == ids[10] and rec[ids[10], 7] == folder  # parent / child
        s.close()
    snapshot, journal = table_files(state, "cells")
    assert not journal.exists()  # folded into the snapshot after the replay and on shutdown
    assert len(json.loads(snapshot.read_text())["names"]) == 302


def test_adding_segments_appends_instead_of_rewriting(tmp_path):
    state = tmp_path / "state"
    with start_server(SPEC, state_dir=state) as srv:
        s = srv.connect()
        nr = paint_layer(s, "cells")
        snapshot, journal = table_files(state, "cells")
        before = snapshot.stat()
        meta_before = (state / "state.json").stat().st_mtime_ns
        sizes = []
        for k in range(120):
            add(s, f"c{k:03d}")
            sizes.append(journal.stat().st_size)
        after = snapshot.stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
            before.st_ino, before.st_mtime_ns, before.st_size)  # the table was not rewritten
        assert (state / "state.json").stat().st_mtime_ns == meta_before
        grow = np.diff(sizes)
        # bytes written per call do not grow with the table (ids only gain a digit or two)
        assert grow[-10:].max() <= grow[:10].max() + 16
        assert sizes[-1] < 120 * 400
        call(s, Cmd.SAVELAYER, [u32(nr), u32(1), u32(0), text("")])
        assert not journal.exists()
        assert len(json.loads(snapshot.read_text())["names"]) == 121
        s.close()


def test_second_server_on_the_same_state_dir_is_refused(tmp_path):
    state = tmp_path / "state"
    with start_server(SPEC, state_dir=state) as first:
        with pytest.raises(RuntimeError, match="exited with code 2") as info:
            start_server(SPEC, state_dir=state)
        last = str(info.value).strip().splitlines()[-1]
        assert str(state) in last and f"pid {first.proc.pid}" in last
        assert "Traceback" not in str(info.value)
        s = first.connect()
        assert call(s, Cmd.GETNROFLAYERS).uints  # the first one keeps serving
        s.close()
        first.proc.kill()  # a crash leaves the lock file, but no lock
        first.proc.wait()
    with start_server(SPEC, state_dir=state) as again:
        s = again.connect()
        assert call(s, Cmd.GETNROFLAYERS).uints
        s.close()
    assert (state / "server.lock").read_text().strip() == str(again.proc.pid)
