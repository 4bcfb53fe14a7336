"""TCP side of the mock VAST: accept loop, one thread per connection, frame I/O, entry point.

Each connection reads a 12-byte header, bounds its length before allocating, reads the body
with ``recv_into`` into a reused buffer, dispatches, and answers one reply per request. A
malformed frame (bad magic, absurd length, truncated value) closes that connection only.
Bulk replies go out as the header, then the array's own buffer (no copies).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from membrane_py.vastapi.protocol import (
    DEFAULT_PORT,
    HEADER_SIZE,
    ProtocolError,
    encode_error,
    encode_reply,
    encode_values,
    parse_header,
    reply_header,
    split_request,
)
from membrane_py.volumes.base import VolumeSource
from mock_vast_server.commands import Bulk, dispatch
from mock_vast_server.persistence import default_state_dir
from mock_vast_server.state import MockVast, StateError

log = logging.getLogger("mock_vast_server")

DEFAULT_MAX_BYTES = 1 << 30
FRAME_OVERHEAD = 1 << 16  # request = block of up to max_bytes plus the box and tags
FIRST_BUFFER = 1 << 16
GROW_STEP = 64 << 20  # a request buffer grows at most this much ahead of the bytes received


def _recv_exact(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from the socket; False when the peer closed first."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


class _Connection:
    """One client: a request buffer that grows with the bytes actually received."""

    def __init__(self, conn: socket.socket, state: MockVast, max_frame: int) -> None:
        self.conn = conn
        self.state = state
        self.max_frame = max_frame
        self.buf = bytearray(FIRST_BUFFER)

    def _read_body(self, length: int) -> memoryview | None:
        got = 0
        while got < length:
            if len(self.buf) <= got:  # grow only as data arrives, so a lying header costs little
                self.buf.extend(bytes(min(length, len(self.buf) + GROW_STEP) - len(self.buf)))
            end = min(length, len(self.buf))
            if not _recv_exact(self.conn, memoryview(self.buf)[got:end]):
                return None
            got = end
        return memoryview(self.buf)[:length]

    def serve(self) -> None:
        head = bytearray(HEADER_SIZE)
        while True:
            if not _recv_exact(self.conn, memoryview(head)):
                return
            length = parse_header(head, self.max_frame)
            body = self._read_body(length)
            if body is None:
                return
            cmd, values = split_request(body)
            self._answer(cmd, values)
            del body, values  # views into the buffer: released so it can grow for the next one

    def _answer(self, cmd: int, values: list) -> None:
        try:
            reply = dispatch(self.state, cmd, values)
        except StateError as exc:
            log.info("command %d -> error %d: %s", cmd, exc.code, exc)
            self.conn.sendall(encode_error(exc.code))
            return
        except Exception:  # noqa: BLE001 - one failing request must not kill the server
            log.exception("command %d failed", cmd)
            self.conn.sendall(encode_error(5))
            return
        if isinstance(reply, Bulk):
            data = memoryview(reply.data).cast("B")
            self.conn.sendall(reply_header(True, data.nbytes))
            self.conn.sendall(data)
        else:
            self.conn.sendall(encode_reply(True, encode_values(reply)))


class VastServer:
    """Listening socket plus connection threads over one :class:`MockVast`."""

    def __init__(self, state: MockVast, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.state = state
        self.max_frame = int(max_bytes) + FRAME_OVERHEAD
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self.stopping = threading.Event()
        self.clients: set[socket.socket] = set()
        self.clients_lock = threading.Lock()

    def serve_forever(self) -> None:
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
                threading.Thread(target=self._handle, args=(conn, addr), daemon=True).start()
        finally:
            self.close()

    def _handle(self, conn: socket.socket, addr: tuple) -> None:
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.clients_lock:
            self.clients.add(conn)
        log.debug("client %s connected", addr)
        try:
            _Connection(conn, self.state, self.max_frame).serve()
        except ProtocolError as exc:
            log.warning("client %s sent a malformed frame, closing it: %s", addr, exc)
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
        self.state.close()


def serve(
    em: VolumeSource,
    labels: VolumeSource | None = None,
    skeletons: Path | None = None,
    state_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    ready: Callable[[str, int], None] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_load: Sequence[Path] = (),
) -> None:
    """Serve the VAST protocol over ``em`` (and ``labels``) until stopped; blocking.

    LOADLAYER may open files under ``allow_load`` and the state dir only.
    ``port=0`` picks a free port; ``ready(host, port)`` is called once listening. SIGTERM
    and Ctrl-C (in the main thread) stop it cleanly, flushing painted layers.
    """
    state = MockVast(em, labels, skeletons, state_dir, max_bytes=max_bytes, allow_load=allow_load)
    server = VastServer(state, host, port, max_bytes)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if ready is not None:
        ready(server.host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("interrupted, shutting down")
    finally:
        server.close()


def _print_ready(host: str, port: int) -> None:
    print(f"mock_vast_server listening on {host}:{port}", flush=True)


def _volume_dir(spec: str) -> list[Path]:
    """The directory of a served volume given as a path (a folder is its own), else none."""
    from membrane_py.volumes.open import _split_inner

    path = _split_inner(spec)[0]
    if not path.exists():
        return []
    return [path if path.is_dir() else path.parent]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mock_vast_server",
                                description="A VAST Lite remote-API server over local data.")
    p.add_argument("--volume", default="synthetic",
                   help='EM volume spec: "synthetic[:ZxYxX[:SEED]]", image folder, .tif, '
                        ".h5[:dataset], .zarr[:array], .vsvi (default: synthetic)")
    p.add_argument("--labels", default=None,
                   help="label volume spec for the 'ground truth' segmentation layer "
                        "(default: the synthetic labels for synthetic volumes, else none)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in nm (z y x)")
    p.add_argument("--skeletons", type=Path, help="skeleton file (.json or .csv)")
    p.add_argument("--state", type=Path,
                   help="state directory (default: $XDG_DATA_HOME/membrane-py/mock_vast/...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--allow-load", type=Path, action="append", default=[], metavar="DIR",
                   help="directory LOADLAYER may open layers from (repeatable); the served "
                        "volume's directory and the state dir are always allowed")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="largest reply or request block in bytes (default 1 GiB)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from membrane_py.volumes import open_volume

    voxel = tuple(args.voxel_size) if args.voxel_size else None
    labels_spec = args.labels
    if labels_spec is None and args.volume.startswith("synthetic"):
        labels_spec = args.volume
    try:
        em = open_volume(args.volume, voxel_size=voxel)
        labels = None if labels_spec is None else open_volume(labels_spec, labels=True,
                                                               voxel_size=voxel)
    except Exception as exc:  # noqa: BLE001 - report any reader failure plainly
        print(f"mock_vast_server: cannot open volume: {exc}", file=sys.stderr)
        return 2
    state_dir = args.state or default_state_dir(args.volume, labels_spec)
    print(f"mock_vast_server: state dir {state_dir}", file=sys.stderr, flush=True)
    try:
        serve(em, labels, args.skeletons, state_dir, args.host, args.port, _print_ready,
              args.max_bytes, [*_volume_dir(args.volume), *args.allow_load])
    except (ValueError, OSError) as exc:
        print(f"mock_vast_server: {exc}", file=sys.stderr)
        return 2
    return 0
