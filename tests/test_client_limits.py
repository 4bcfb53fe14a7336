"""VastClient against misbehaving peers on real sockets: a listener started in the test
that never answers, trickles bytes, or declares huge replies. Every call must end within
its timeout or fail before allocating, with one clear line."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.vastapi.client import VastClient, VastError, VastTimeoutError
from membrane_py.vastapi.protocol import HEADER_SIZE, MAGIC


@contextlib.contextmanager
def listener(behave: Callable[[socket.socket], None]) -> Iterator[int]:
    """A 127.0.0.1 listener that runs ``behave`` on each connection; yields its port."""
    stop = threading.Event()
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = srv.accept()
                with conn, contextlib.suppress(OSError):
                    conn.recv(HEADER_SIZE + 64)  # the request
                    behave(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(10)
        srv.close()


def silent(conn: socket.socket) -> None:
    """Accept and never answer (until the client hangs up, at most 10 s)."""
    conn.settimeout(10)
    with contextlib.suppress(TimeoutError):
        conn.recv(1)


def trickle(conn: socket.socket) -> None:
    """A valid header for a 100-byte typed reply, then one byte every 0.2 s."""
    conn.sendall(MAGIC + struct.pack("<Qi", 104, 1))
    for _ in range(100):
        conn.sendall(b"\x01")
        time.sleep(0.2)


def header_then_close(length: int) -> Callable[[socket.socket], None]:
    def behave(conn: socket.socket) -> None:
        conn.sendall(MAGIC + struct.pack("<Qi", length, 1) + bytes(10))
    return behave


def test_silent_server_times_out_naming_address_and_timeout():
    with listener(silent) as port, VastClient("127.0.0.1", port, timeout=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(VastTimeoutError) as err:
            c.get_info()
        assert time.monotonic() - t0 < 3
    assert isinstance(err.value, ConnectionError) and isinstance(err.value, TimeoutError)
    assert f"127.0.0.1:{port}" in str(err.value) and "within 1 s" in str(err.value)
    assert not c.connected


def test_trickling_reply_cannot_outlive_the_timeout():
    with listener(trickle) as port, VastClient("127.0.0.1", port, timeout=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(VastTimeoutError):
            c.get_info()
        assert time.monotonic() - t0 < 2.5  # bytes keep arriving, the deadline still holds


def test_huge_typed_reply_is_refused_before_allocating():
    with listener(header_then_close(1 << 30)) as port, VastClient("127.0.0.1", port) as c:
        tracemalloc.start()
        try:
            with pytest.raises(VastError) as err:
                c.get_info()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert err.value.code == 2 and "exceeds the limit" in str(err.value)
    assert peak < 4 << 20


def test_lying_list_reply_allocates_only_what_arrives():
    # a bulk list may be large, so 1 GiB is within bounds; only 10 bytes come, then EOF
    with listener(header_then_close(1 << 30)) as port, VastClient("127.0.0.1", port) as c:
        tracemalloc.start()
        try:
            with pytest.raises(ConnectionError):
                c.get_all_segment_names()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 << 20


def test_cli_reports_a_silent_server_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBRANE_VAST_TIMEOUT", "1")
    with listener(silent) as port:
        r = CliRunner().invoke(app, ["paint", str(tmp_path / "prob.tif"),
                                     "--vast", f"vast://127.0.0.1:{port}"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code not in (0, None) and isinstance(r.exception, SystemExit), r.output
    assert len(lines) == 1, r.output
    assert f"127.0.0.1:{port}" in lines[0] and "within 1 s" in lines[0]
