"""LOADLAYER limits, against a real server process: where layers may come from, how big a
synthetic layer may be, and that removing a layer gives its memory back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from membrane_py.vastapi.protocol import Cmd, error_code_of, i32, text, u32
from mock_vast_server.launch import raw_request, start_server

SPEC = "synthetic:2x64x64"


def load(sock, spec: str) -> tuple[bool, int]:
    """(success, layer number or error code) of LOADLAYER ``spec``."""
    ok, payload = raw_request(sock, Cmd.LOADLAYER, [i32(-1), text(spec)])
    return ok, (payload[1] if ok else error_code_of(payload))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def tif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((2, 64, 64), 7, np.uint8), photometric="minisblack")
    return path


def test_only_allowed_directories_can_be_loaded(tmp_path):
    allowed, elsewhere, state = tmp_path / "allowed", tmp_path / "elsewhere", tmp_path / "state"
    inside = tif(allowed / "em.tif")
    outside = tif(elsewhere / "secret.tif")
    (allowed / "link.tif").symlink_to(outside)
    with start_server(SPEC, state_dir=state, allow_load=[allowed]) as srv:
        s = srv.connect()
        assert load(s, str(inside))[0]
        assert load(s, str(tif(state / "own.tif")))[0]  # the state dir is always allowed
        assert load(s, str(outside)) == (False, 32)
        assert load(s, str(allowed / "link.tif")) == (False, 32)  # resolved, not by name
        assert load(s, str(allowed / ".." / "elsewhere" / "secret.tif")) == (False, 32)
        s.close()
    assert "outside the directories" in srv.stderr and "--allow-load" in srv.stderr


def test_served_volume_directory_is_allowed(tmp_path):
    volume = tif(tmp_path / "data" / "em.tif")
    beside = tif(tmp_path / "data" / "prediction.tif")
    with start_server(str(volume), state_dir=tmp_path / "state") as srv:
        s = srv.connect()
        assert load(s, str(beside))[0]
        assert load(s, str(tif(tmp_path / "other" / "x.tif"))) == (False, 32)
        s.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_synthetic_layers_are_bounded_and_freed_on_removal(tmp_path, monkeypatch):
    # a fixed threshold makes glibc map every large array on its own, so freeing one shows
    # in the resident size (the adaptive default may keep freed arrays in the heap)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 17))
    with start_server(SPEC, state_dir=tmp_path / "state") as srv:
        s = srv.connect()
        base = rss_bytes(srv.proc.pid)
        assert load(s, "synthetic:16x2048x2048") == (False, 32)  # refused before allocating
        assert rss_bytes(srv.proc.pid) < base + (64 << 20)
        ok, nr = load(s, "synthetic:8x1024x1024")
        assert ok
        loaded = rss_bytes(srv.proc.pid)
        ok, _ = raw_request(s, Cmd.REMOVELAYER, [u32(nr), u32(1)])
        assert ok
        assert loaded - base > 6 << 20  # 8 MB of EM voxels
        assert rss_bytes(srv.proc.pid) < base + (loaded - base) // 3  # and they are gone
        s.close()
    assert "exceed the limit" in srv.stderr
