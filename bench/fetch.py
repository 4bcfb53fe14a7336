"""Chunk-fetch throughput: VastClient against the bundled server vs a raw loopback socket.

Starts the bundled mock VAST server over an in-memory synthetic volume, fetches N chunks of
16 x 1024 x 1024 uint8 with ``VastClient.get_em_image`` and through ``iter_chunks`` (with
prefetch), and, in the same run, moves the same number of equally sized messages over a
plain loopback socket (a separate sender process; the receiver ``recv_into`` one buffer).
Prints one JSON object; ``ratio`` = client / raw socket (aim: >= 0.5).

    python bench/fetch.py [--chunks N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from membrane_py.geometry import Box  # noqa: E402
from membrane_py.vastapi.client import VastClient  # noqa: E402
from membrane_py.volumes.blocks import iter_chunks  # noqa: E402
from mock_vast_server.launch import start_server  # noqa: E402

CHUNK = (16, 1024, 1024)
VOLUME = (16, 2048, 2048)
MB = 1e6


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sender(port: int, nbytes: int, count: int) -> None:
    """Answer each 1-byte request with one message of ``nbytes`` (request/reply like VAST)."""
    payload = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            if s.recv(1) != b"r":
                return
            s.sendall(payload)


def raw_socket_mb_s(nbytes: int, count: int) -> float:
    """Loopback throughput of ``count`` request/reply messages of ``nbytes`` each."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        proc = mp.get_context("spawn").Process(
            target=_sender, args=(lsock.getsockname()[1], nbytes, count + 1), daemon=True)
        proc.start()
        conn, _ = lsock.accept()
    buf = np.empty(nbytes, np.uint8)
    view = memoryview(buf)

    def one() -> None:
        conn.sendall(b"r")
        got = 0
        while got < nbytes:
            k = conn.recv_into(view[got:], nbytes - got)
            if k == 0:
                raise ConnectionError("sender went away")
            got += k

    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        one()  # warm-up (sender start, page faults)
        t0 = time.perf_counter()
        for _ in range(count):
            one()
        dt = time.perf_counter() - t0
    proc.join(timeout=10)
    return nbytes * count / dt / MB


def chunk_boxes(n: int) -> list[Box]:
    """n chunk boxes cycling over the tiles of the volume."""
    cz, cy, cx = CHUNK
    tiles = [Box(0, cz, y, y + cy, x, x + cx)
             for y in range(0, VOLUME[1], cy) for x in range(0, VOLUME[2], cx)]
    return [tiles[i % len(tiles)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20, help="chunks to fetch per method")
    ap.add_argument("--json", type=Path, help="also write the result to this file")
    args = ap.parse_args()
    n = args.chunks
    nbytes = int(np.prod(CHUNK))
    spec = "synthetic:" + "x".join(map(str, VOLUME))

    raw_before = raw_socket_mb_s(nbytes, n)  # raw runs before and after: load drifts
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as state, \
            start_server(volume=spec, state_dir=state, timeout=300.0) as srv, \
            VastClient(srv.host, srv.port, timeout=120.0) as client:
        startup_s = time.perf_counter() - t_start
        boxes = chunk_boxes(n)
        client.get_em_image(0, boxes[0])  # warm-up: server caches, page faults
        t0 = time.perf_counter()
        for box in boxes:
            data = client.get_em_image(0, box)
            assert data.shape == CHUNK
        client_s = time.perf_counter() - t0

        out = np.empty(CHUNK, np.uint8)
        t0 = time.perf_counter()
        for box in boxes:
            client.get_em_image(0, box, out=out)
        reuse_s = time.perf_counter() - t0

        region = Box(0, CHUNK[0], 0, VOLUME[1], 0, VOLUME[2])
        got, t0 = 0, time.perf_counter()
        while got < n:
            for c in iter_chunks(lambda b: client.get_em_image(0, b), region, VOLUME, CHUNK,
                                 (0, 0, 0), prefetch=2):
                assert c.data.shape == CHUNK
                got += 1
                if got == n:
                    break
        iter_s = time.perf_counter() - t0

    raw = (raw_before + raw_socket_mb_s(nbytes, n)) / 2
    client_mb_s = nbytes * n / client_s / MB
    out_mb_s = nbytes * n / reuse_s / MB
    result = {
        "chunk_shape": list(CHUNK),
        "chunk_bytes": nbytes,
        "chunks": n,
        "volume_shape": list(VOLUME),
        "server_startup_s": round(startup_s, 2),
        "client_mb_s": round(client_mb_s, 1),
        "client_out_buffer_mb_s": round(out_mb_s, 1),
        "iter_chunks_mb_s": round(nbytes * n / iter_s / MB, 1),
        "raw_socket_mb_s": round(raw, 1),
        "ratio": round(client_mb_s / raw, 3),
        "ratio_out_buffer": round(out_mb_s / raw, 3),
        "aim_ratio": 0.5,
        "unit": "MB/s = 1e6 bytes per second",
        "device": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                   "platform": platform.platform()},
    }
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
