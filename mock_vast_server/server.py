"""TCP side of the mock VAST: accept loop, one thread per connection, frame I/O, entry point.

Each connection reads a 12-byte header, bounds its length, then reads the body with
``recv_into`` into a buffer that grows only as bytes arrive (at most twice what was
received), so a header that lies about its length costs almost nothing. The server caps
the number of connections and the bytes all their buffers hold together, and closes
connections that stay idle or stall in the middle of a frame. A malformed frame closes that
connection only. Bulk replies go out as the header, then the array's own buffer (no copies).

The protocol has no authentication: anyone who reaches the port can read and change the
data, so binding to anything but a loopback address needs ``allow_remote``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from membrane_py.vastapi.protocol import (
    DEFAULT_PORT,
    HEADER_SIZE,
    Cmd,
    ProtocolError,
    encode_error,
    encode_reply,
    encode_values,
    parse_header,
    reply_header,
    split_request,
)
from membrane_py.volumes.base import VolumeSource
from membrane_py.volumes.open import _split_inner
from mock_vast_server.commands import Bulk, dispatch
from mock_vast_server.limits import FIRST_BUFFER, KEEP_BUFFER, Limits
from mock_vast_server.persistence import default_state_dir
from mock_vast_server.state import MockVast, StateError

log = logging.getLogger("mock_vast_server")

class _Budget:
    """Bytes that all connection buffers may hold together; thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


class _Overloaded(Exception):
    """A request would push the buffered bytes of all connections over the limit."""


class _Connection:
    """One client: a request buffer that grows with the bytes actually received."""

    def __init__(self, conn: socket.socket, state: MockVast, limits: Limits,
                 budget: _Budget) -> None:
        self.conn = conn
        self.state = state
        self.limits = limits
        self.budget = budget
        self.buf = bytearray()

    def _recv_into(self, view: memoryview, deadline: float, wait: float) -> bool:
        """Fill ``view``; False when the peer closed first, TimeoutError past ``deadline`` or
        after ``wait`` seconds without a byte."""
        got = 0
        while got < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("frame not complete in time")
            self.conn.settimeout(min(left, wait))
            n = self.conn.recv_into(view[got:])
            if n == 0:
                return False
            got += n
        return True

    def _grow(self, size: int) -> None:
        extra = size - len(self.buf)
        if not self.budget.take(extra):
            raise _Overloaded(f"{self.budget.used} bytes buffered, limit {self.budget.limit}")
        self.buf.extend(bytes(extra))

    def _shrink(self) -> None:
        if len(self.buf) > KEEP_BUFFER:
            self.budget.give(len(self.buf))
            self.buf = bytearray()

    def _read_body(self, length: int, deadline: float) -> memoryview | None:
        got = 0
        while got < length:
            if len(self.buf) <= got:  # at most double what arrived, so a lying header costs little
                self._grow(min(length, max(FIRST_BUFFER, 2 * got)))
            end = min(length, len(self.buf))
            if not self._recv_into(memoryview(self.buf)[got:end], deadline,
                                   self.limits.stall_timeout):
                return None
            got = end
        return memoryview(self.buf)[:length]

    def serve(self) -> None:
        head = bytearray(HEADER_SIZE)
        lim = self.limits
        try:
            while True:
                first = time.monotonic()
                if not self._recv_into(memoryview(head)[:1], first + lim.idle_timeout,
                                       lim.idle_timeout):
                    return
                if not self._recv_into(memoryview(head)[1:], time.monotonic() + lim.stall_timeout,
                                       lim.stall_timeout):
                    return
                length = parse_header(head, lim.max_frame)
                body = self._read_body(length, time.monotonic() + lim.frame_time(length))
                if body is None:
                    return
                cmd, values = split_request(body)
                self._answer(cmd, values)
                del body, values  # views into the buffer: released so it can grow or shrink
                self._shrink()
        finally:
            self.budget.give(len(self.buf))
            self.buf = bytearray()

    def _send(self, *parts: bytes | memoryview) -> None:
        self.conn.settimeout(self.limits.frame_time(sum(len(p) for p in parts)))
        for p in parts:
            self.conn.sendall(p)

    def _answer(self, cmd: int, values: list) -> None:
        try:
            reply = dispatch(self.state, cmd, values)
        except StateError as exc:
            log.info("command %d -> error %d: %s", cmd, exc.code, exc)
            self._send(encode_error(exc.code))
            return
        except Exception:  # noqa: BLE001 - one failing request must not kill the server
            log.exception("command %d failed", cmd)
            self._send(encode_error(5))
            return
        if isinstance(reply, Bulk):
            data = memoryview(reply.data).cast("B")
            self._send(reply_header(True, data.nbytes), data)
        else:
            self._send(encode_reply(True, encode_values(reply)))


class VastServer:
    """A listening socket; :meth:`serve_forever` runs connection threads over a state."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.budget = _Budget(self.limits.max_buffered)
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self.stopping = threading.Event()
        self.clients: set[socket.socket] = set()
        self.clients_lock = threading.Lock()

    def serve_forever(self, state: MockVast) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    conn, addr = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self.stopping.is_set():
                        break
                    raise
                with self.clients_lock:
                    full = len(self.clients) >= self.limits.max_connections
                    if not full:
                        self.clients.add(conn)
                if full:
                    log.warning("refusing %s: %d connections open already", addr,
                                self.limits.max_connections)
                    conn.close()
                    continue
                threading.Thread(target=self._handle, args=(conn, addr, state),
                                 daemon=True).start()
        finally:
            self.close()

    def _handle(self, conn: socket.socket, addr: tuple, state: MockVast) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("client %s connected", addr)
        try:
            _Connection(conn, state, self.limits, self.budget).serve()
        except ProtocolError as exc:
            log.warning("client %s sent a malformed frame, closing it: %s", addr, exc)
        except _Overloaded as exc:
            log.warning("client %s: request refused, server buffers full (%s)", addr, exc)
        except TimeoutError:
            log.info("client %s idle or stalled too long, closing it", addr)
        except OSError as exc:
            log.debug("client %s: %s", addr, exc)
        finally:
            with self.clients_lock:
                self.clients.discard(conn)
            conn.close()

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        with self.clients_lock:
            for c in list(self.clients):
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)


class ServeError(Exception):
    """The server cannot start; the message names the problem and the fix in one line."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything `membrane serve` and ``python -m mock_vast_server`` take."""

    volume: str = "synthetic"
    labels: str | None = None  # default: the synthetic labels for synthetic volumes, else none
    skeletons: Path | None = None
    state: Path | None = None  # default: default_state_dir(volume, labels)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    voxel_size_xyz: tuple[float, float, float] | None = None  # nm, VAST's x, y, z order
    allow_remote: bool = False  # needed to bind anything but a loopback address
    limits: Limits = field(default_factory=Limits)
    allow_load: tuple[Path, ...] = ()  # besides the volume's own folder and the state dir
    without: tuple[str, ...] = ()  # command names answered with error 1 (an older VAST)

    @property
    def loadable(self) -> list[Path]:
        """Folders LOADLAYER may open layers from (the volume's folder, then allow_load)."""
        path = _split_inner(self.volume)[0]
        own = [path if path.is_dir() else path.parent] if path.exists() else []
        return [*own, *self.allow_load]

    @property
    def labels_spec(self) -> str | None:
        if self.labels is None and self.volume.startswith("synthetic"):
            return self.volume
        return self.labels


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (names are not resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(cfg: ServeConfig, prog: str) -> None:
    if not is_loopback(cfg.host):
        if not cfg.allow_remote:
            raise ServeError(f"refusing to serve on {cfg.host}: the VAST protocol has no "
                             "authentication; use 127.0.0.1, or add --allow-remote if every "
                             "machine that can reach this port may read and change the data")
        print(f"{prog}: warning: serving on {cfg.host} without authentication; anyone who "
              "can reach the port can read and change the data", file=sys.stderr)
    if not 0 <= cfg.port <= 65535:
        raise ServeError(f"port {cfg.port} is out of range; give 0..65535 (0 picks a free port)")
    _without(cfg)


def _without(cfg: ServeConfig) -> set[int]:
    """The command codes ``--without`` names; an unknown name is a ServeError."""
    names = {c.name: int(c) for c in Cmd}
    bad = [n for n in cfg.without if n.upper() not in names]
    if bad:
        raise ServeError(f"--without {bad[0]}: not a VAST command name (e.g. "
                         "REFRESHLAYERREGION, GETVIEWZOOM)")
    return {names[n.upper()] for n in cfg.without}


def _open_volumes(cfg: ServeConfig) -> tuple[VolumeSource, VolumeSource | None]:
    from membrane_py.volumes import open_volume

    voxel = None if cfg.voxel_size_xyz is None else tuple(cfg.voxel_size_xyz[::-1])
    spec = cfg.volume
    try:
        em = open_volume(spec, voxel_size=voxel)
        spec = cfg.labels_spec
        labels = None if spec is None else open_volume(spec, labels=True, voxel_size=voxel)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's input
        raise ServeError(f"cannot open volume {spec!r}: {exc}") from exc
    if not em.voxel_size_known:
        print(f"warning: {cfg.volume} has no voxel size metadata, so VAST clients are told "
              "1 x 1 x 1 nm; pass --voxel-size X Y Z (nm, VAST's x, y, z order)",
              file=sys.stderr, flush=True)
    return em, labels


def _bind(cfg: ServeConfig) -> VastServer:
    try:
        return VastServer(cfg.host, cfg.port, cfg.limits)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {cfg.port} on {cfg.host} is already in use (another VAST "
                             "or server?); stop it or choose another --port (0 picks a free "
                             "one)") from exc
        raise ServeError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}; check --host and "
                         "--port") from exc


def _print_ready(host: str, port: int) -> None:
    print(f"mock_vast_server listening on {host}:{port}", flush=True)


def serve(cfg: ServeConfig, ready: Callable[[str, int], None] | None = _print_ready,
          prog: str = "mock_vast_server") -> int:
    """Serve the VAST protocol as ``cfg`` says until stopped; blocking. Returns an exit status.

    A failure to start prints one line (problem and fix) to stderr and returns 2. The state
    dir is created only after the volume opened and the port is bound. ``ready(host, port)``
    is called once listening. SIGTERM and Ctrl-C (in the main thread) stop it cleanly,
    flushing painted layers.
    """
    try:
        _check_address(cfg, prog)
        em, labels = _open_volumes(cfg)
        server = _bind(cfg)
    except ServeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    state_dir = cfg.state or default_state_dir(cfg.volume, cfg.labels_spec)
    try:
        state = MockVast(em, labels, cfg.skeletons, state_dir, max_bytes=cfg.limits.max_bytes,
                         allow_load=cfg.loadable)
    except (StateError, ValueError, OSError) as exc:
        server.close()
        print(f"{prog}: error: cannot use state dir {state_dir}: {exc}", file=sys.stderr)
        return 2
    state.without = _without(cfg)
    print(f"{prog}: state dir {state_dir}", file=sys.stderr, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if ready is not None:
        ready(server.host, server.port)
    try:
        server.serve_forever(state)
    except KeyboardInterrupt:
        log.info("interrupted, shutting down")
    finally:
        server.close()
        state.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(prog="mock_vast_server",
                                description="A VAST Lite remote-API server over local data.")
    p.add_argument("--volume", default="synthetic",
                   help='EM volume spec: "synthetic[:ZxYxX[:SEED]]", image folder, .tif, '
                        ".h5[:dataset], .zarr[:array], .vsvi (default: synthetic)")
    p.add_argument("--labels", default=None,
                   help="label volume spec for the 'ground truth' segmentation layer "
                        "(default: the synthetic labels for synthetic volumes, else none)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="voxel size in nm, in VAST's order x y z")
    p.add_argument("--skeletons", type=Path, help="skeleton file (.json or .csv)")
    p.add_argument("--state", type=Path,
                   help="state directory (default: $XDG_DATA_HOME/membrane-py/mock_vast/...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (the protocol has no authentication)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--allow-load", type=Path, action="append", default=[], metavar="DIR",
                   help="directory LOADLAYER may open layers from (repeatable); the served "
                        "volume's directory and the state dir are always allowed")
    p.add_argument("--without", action="append", default=[], metavar="COMMAND",
                   help="answer this command (a protocol name such as REFRESHLAYERREGION) "
                        "with error 1, as a VAST version without it does (repeatable)")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes,
                   help="largest reply or request block in bytes (default 1 GiB)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"concurrent connections; more are closed at once (default "
                        f"{d.max_connections})")
    p.add_argument("--max-buffered", type=int, default=d.max_buffered,
                   help="bytes all request buffers may hold together (default 2 GiB)")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   help=f"close a connection idle this many seconds (default {d.idle_timeout:g})")
    p.add_argument("--stall-timeout", type=float, default=d.stall_timeout,
                   help="close a connection that sends no byte of a started frame for this many "
                        f"seconds (default {d.stall_timeout:g})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        limits = Limits(args.max_bytes, args.max_connections, args.max_buffered,
                        args.idle_timeout, args.stall_timeout)
    except ValueError as exc:
        print(f"mock_vast_server: error: {exc}", file=sys.stderr)
        return 2
    return serve(ServeConfig(
        volume=args.volume, labels=args.labels, skeletons=args.skeletons, state=args.state,
        host=args.host, port=args.port,
        voxel_size_xyz=tuple(args.voxel_size) if args.voxel_size else None,
        allow_remote=args.allow_remote, limits=limits, allow_load=tuple(args.allow_load),
        without=tuple(args.without)))
