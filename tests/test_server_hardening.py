"""Resource limits of the mock VAST server, against real server processes on real sockets:
buffers grow with bytes received, connections and buffered bytes are capped, idle and
stalled connections are closed."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

from membrane_py.vastapi.protocol import Cmd, Tag, Value, encode_request
from mock_vast_server.launch import ServerProcess, raw_request, reply_or_close, start_server
from tests.conftest import SMALL_SYNTHETIC


def _server(tmp_path: Path, *args: str) -> ServerProcess:
    return start_server(SMALL_SYNTHETIC, state_dir=tmp_path / "state", extra_args=args)


def _alive(server: ServerProcess) -> bool:
    with contextlib.closing(server.connect(timeout=10)) as s:
        return raw_request(s, Cmd.GETINFO)[0]


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``sock`` (fails if it stays open past ``seconds``)."""
    sock.settimeout(seconds)
    t0 = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    return time.monotonic() - t0


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_huge_declared_lengths_keep_rss_bounded(tmp_path):
    n_conn, sent = 30, 256 << 10
    with _server(tmp_path, "--max-connections", "40") as srv:
        assert _alive(srv)
        before = _rss_bytes(srv.proc.pid)
        socks = [srv.connect(timeout=10) for _ in range(n_conn)]
        try:
            for s in socks:  # each declares a ~1 GiB frame, then sends 256 KiB of it
                s.sendall(b"VAST" + struct.pack("<Q", 1 << 30) + bytes(sent))
            time.sleep(1.0)
            grown = _rss_bytes(srv.proc.pid) - before
            assert _alive(srv)
        finally:
            for s in socks:
                s.close()
    # 30 x 256 KiB received; buffers at most twice that (the old code grew 64 MiB each)
    assert grown < 64 << 20, f"RSS grew {grown / 2**20:.0f} MiB"


def test_stalled_header_idle_connection_and_trickled_body_are_closed(tmp_path):
    with _server(tmp_path, "--stall-timeout", "1", "--idle-timeout", "3") as srv:
        partial, idle, trickle = (srv.connect(timeout=10) for _ in range(3))
        with partial, idle, trickle:
            partial.sendall(b"VAS")
            t_partial = _closed_within(partial, 10)
            t_idle = _closed_within(idle, 10)
            # a 100-byte frame must arrive within 1 s + 100 B / 1 MiB/s, even with progress
            trickle.sendall(b"VAST" + struct.pack("<Q", 100))
            t0 = time.monotonic()
            with contextlib.suppress(OSError):
                for _ in range(20):
                    trickle.sendall(b"\0")
                    time.sleep(0.25)
            t_trickle = time.monotonic() - t0
        assert 0.5 < t_partial < 3, t_partial
        assert 1.0 < t_idle < 6, t_idle  # idle timer started at connect, before partial closed
        assert t_trickle < 4, "a trickling frame kept its connection past the deadline"
        assert _alive(srv)
        assert "idle or stalled" in srv.stderr


def test_connection_over_the_cap_is_refused_existing_ones_keep_working(tmp_path):
    with _server(tmp_path, "--max-connections", "3") as srv:
        socks = [srv.connect(timeout=10) for _ in range(3)]
        try:
            for s in socks:  # answered, so all three are registered
                assert raw_request(s, Cmd.GETINFO)[0]
            with contextlib.closing(srv.connect(timeout=10)) as extra:
                _closed_within(extra, 5)
            assert raw_request(socks[0], Cmd.GETAPIVERSION)[0]
            socks[1].close()
            deadline = time.monotonic() + 5
            while True:  # the freed slot takes a connection again (its thread ends async)
                with contextlib.closing(srv.connect(timeout=10)) as s, \
                        contextlib.suppress(ConnectionError):
                    if raw_request(s, Cmd.GETINFO)[0]:
                        break
                assert time.monotonic() < deadline, "slot not freed after a close"
                time.sleep(0.1)
        finally:
            for s in socks:
                s.close()
        assert "refusing" in srv.stderr


def test_buffered_bytes_are_capped_across_connections(tmp_path):
    frame = encode_request(Cmd.GETINFO, [Value(Tag.BLOCK, bytes(990_000))])
    with _server(tmp_path, "--max-bytes", "1000000", "--max-buffered", "1100000") as srv:
        with srv.connect(timeout=10) as a, srv.connect(timeout=10) as b:
            a.sendall(frame[:900_000])  # a's buffer grows to the whole frame (~1 MB)
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                b.sendall(frame[:300_000])  # b would need more than what is left: closed
            _closed_within(b, 5)
            assert _alive(srv)  # one small buffer still fits
            a.sendall(frame[900_000:])
            assert reply_or_close(a)  # a's request completes and is answered
        assert "buffers full" in srv.stderr
