"""Start a mock VAST server in a child process and wait until it listens.

Used by tests, the demo and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from membrane_py.vastapi.protocol import (
    HEADER_SIZE,
    Value,
    encode_request,
    parse_header,
    split_reply,
)
from mock_vast_server.persistence import default_state_dir

READY_PREFIX = "mock_vast_server listening on "


class ServerProcess:
    """A running ``python -m mock_vast_server``; a context manager that stops it on exit."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, state_dir: Path,
                 stderr_path: Path) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.state_dir = state_dir
        self.stderr_path = stderr_path
        self._final_stderr: str | None = None

    @property
    def stderr(self) -> str:
        """Everything the server logged (kept after stop, when its temp file is removed)."""
        if self._final_stderr is not None:
            return self._final_stderr
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then kill if it does not exit within ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._final_stderr is None:
            self._final_stderr = self.stderr
            self.stderr_path.unlink(missing_ok=True)

    def connect(self, timeout: float = 30.0) -> socket.socket:
        """A plain TCP connection to the server (for raw-protocol tests and benchmarks)."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    volume: str = "synthetic",
    labels: str | None = None,
    skeletons: str | Path | None = None,
    state_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    voxel_size: tuple[float, float, float] | None = None,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
    allow_load: Sequence[str | Path] = (),
) -> ServerProcess:
    """Launch the server and return once it prints its ready line.

    ``voxel_size`` is (z, y, x) like every array here (the command line takes x y z).
    ``allow_load``: directories LOADLAYER may open layers from (``--allow-load``).

    Raises RuntimeError with the server's stderr when it exits early or is not ready in time.
    """
    state = Path(state_dir) if state_dir is not None else default_state_dir(volume, labels)
    cmd = [sys.executable, "-m", "mock_vast_server", "--volume", volume, "--host", host,
           "--port", str(port), "--state", str(state)]
    if labels is not None:
        cmd += ["--labels", labels]
    if skeletons is not None:
        cmd += ["--skeletons", str(skeletons)]
    if voxel_size is not None:
        cmd += ["--voxel-size", *(str(v) for v in voxel_size[::-1])]
    for folder in allow_load:
        cmd += ["--allow-load", str(folder)]
    cmd += list(extra_args)
    fd, err_name = tempfile.mkstemp(prefix="mock_vast_", suffix=".stderr")
    os.close(fd)
    err_path = Path(err_name)
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    server = ServerProcess(proc, host, port, state, err_path)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                server.stop()
                raise RuntimeError(f"mock_vast_server not ready after {timeout:.0f} s; "
                                   f"stderr:\n{server.stderr}")
            if not sel.select(min(left, 0.5)):
                continue
            line = proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                bound_host, bound_port = line[len(READY_PREFIX):].strip().rsplit(":", 1)
                server.host, server.port = bound_host, int(bound_port)
                return server
            if not line:  # stdout closed: the process is ending
                try:
                    proc.wait(max(left, 0.1))
                except subprocess.TimeoutExpired:
                    continue
                server.stop()
                raise RuntimeError(f"mock_vast_server exited with code {proc.returncode} before "
                                   f"listening; stderr:\n{server.stderr}")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``; ConnectionError when it closes first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def raw_request(sock: socket.socket, cmd: int, params: Sequence[Value] = (),
                max_length: int = 1 << 31) -> tuple[bool, bytes]:
    """Send one request frame and return (success flag, payload bytes) of the reply."""
    sock.sendall(encode_request(cmd, list(params)))
    length = parse_header(recv_exact(sock, HEADER_SIZE), max_length)
    ok, payload = split_reply(recv_exact(sock, length))
    return ok, bytes(payload)


def send_and_close(server: ServerProcess, data: bytes) -> None:
    """Send bytes, then hang up (possibly mid-frame); a server that hung up first is fine."""
    with contextlib.closing(server.connect(timeout=10)) as s, contextlib.suppress(OSError):
        s.sendall(data)


def reply_or_close(sock: socket.socket) -> bool:
    """Read one reply: True for a well-formed frame, False when the server closed instead.

    Raises ProtocolError or AssertionError for anything else.
    """
    head = sock.recv(HEADER_SIZE, socket.MSG_WAITALL)
    if not head:
        return False
    length = parse_header(head, 1 << 31)
    body = recv_exact(sock, length)
    (flag,) = struct.unpack_from("<i", body)
    assert flag in (0, 1), f"result flag {flag}"
    return True
