"""Robustness of the bundled server and of resumable jobs, against real server processes.

1. Hostile traffic: >= 10,000 frames of every kind (random bytes, truncated frames, huge
   declared lengths, unknown tags, every tag type, garbage bodies, every implemented command
   with random well-typed values, slow headers, more concurrent connections than the cap)
   while the server's RSS is sampled; then the server must be alive and answer.
2. ADDSEGMENT calls per second through VastClient.
3. Paint safety: voxels a user painted, then the paint job over the same region with the
   default overwrite=False; user voxels changed must be 0.
4. Killed predictions: `membrane predict` SIGKILLed mid-run, rerun, compared byte for byte
   with an uninterrupted run (differing bytes must be 0).

Prints one JSON object.  python bench/robustness.py [--frames N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from predict_support import folder_bytes, tile_keys, tiny_checkpoint  # noqa: E402

from membrane_py.edit.paint import PaintJob, run_paint  # noqa: E402
from membrane_py.geometry import Box  # noqa: E402
from membrane_py.predict.job import PredictJob, RegionSpec  # noqa: E402
from membrane_py.predict.runner import run_prediction  # noqa: E402
from membrane_py.segment.instances import InstanceConfig, membrane_map_from_labels  # noqa: E402
from membrane_py.vastapi.client import VastClient  # noqa: E402
from membrane_py.vastapi.protocol import (  # noqa: E402
    Cmd,
    ProtocolError,
    Tag,
    Value,
    encode_request,
    error_code_of,
    request_header,
)
from membrane_py.volumes.synthetic import make_synthetic  # noqa: E402
from mock_vast_server.commands import HANDLERS  # noqa: E402
from mock_vast_server.launch import (  # noqa: E402
    ServerProcess,
    raw_request,
    reply_or_close,
    send_and_close,
    start_server,
)

VOLUME = (8, 256, 256)
SPEC = "synthetic:{}x{}x{}".format(*VOLUME)
MAX_CONNECTIONS = 64
STALL_S = 2.0
CMDS = [int(c) for c in Cmd]


# -- hostile traffic -----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Samples a process's RSS every 20 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))


def random_value(rng: np.random.Generator, tag: Tag) -> Value:
    if tag is Tag.UINT32:
        picks = [0, 1, 255, 2**31, 2**32 - 1, int(rng.integers(0, 300))]
        return Value(tag, picks[int(rng.integers(len(picks)))])
    if tag is Tag.INT32:
        return Value(tag, int(rng.integers(-(2**31), 2**31)))
    if tag is Tag.DOUBLE:
        return Value(tag, float(rng.choice([0.0, -1.0, np.nan, np.inf, rng.normal() * 1e6])))
    if tag is Tag.TEXT:
        return Value(tag, str(rng.choice(["", "x", "/nonexistent.vsvi", "name", "ä" * 40])))
    if tag is Tag.BLOCK:
        return Value(tag, rng.bytes(int(rng.integers(0, 600))))
    return Value(tag, int(rng.integers(0, 2**63)))


SIGNATURE_TAGS = {"u": Tag.UINT32, "i": Tag.INT32, "d": Tag.DOUBLE, "t": Tag.TEXT,
                  "b": Tag.BLOCK}


def well_typed(rng: np.random.Generator) -> tuple[int, list[Value]]:
    """An implemented command with random values of the types one of its signatures takes."""
    cmd = int(rng.choice(list(HANDLERS)))
    sig = HANDLERS[cmd].signatures
    chars = sig[int(rng.integers(len(sig)))]
    return cmd, [random_value(rng, SIGNATURE_TAGS.get(c, Tag.UINT32)) for c in chars]


class Session:
    """A reused connection that reconnects whenever the server closed it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server, self.sock = server, None
        self.closed_by_server = self.bad_replies = 0

    def exchange(self, frame: bytes) -> None:
        if self.sock is None:
            self.sock = self.server.connect(timeout=30)
        try:
            self.sock.sendall(frame)
            answered = reply_or_close(self.sock)
        except (ProtocolError, AssertionError):
            answered, self.bad_replies = False, self.bad_replies + 1
        except OSError:
            answered = False
        if not answered:
            self.closed_by_server += 1
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def hostile(server: ServerProcess, n: int, rng: np.random.Generator) -> dict:
    """Send about ``n`` hostile frames of every category; counts per category."""
    counts: dict[str, int] = {}
    share = n // 8

    def count(name: str, k: int = 1) -> None:
        counts[name] = counts.get(name, 0) + k

    for _ in range(share):
        send_and_close(server, rng.bytes(int(rng.integers(0, 300))))
        count("random_bytes")
    for _ in range(share):
        frame = encode_request(*well_typed(rng))
        send_and_close(server, frame[: int(rng.integers(0, len(frame)))])
        count("truncated")
    held = []
    for i in range(share):
        lengths = [2**64 - 1, 2**40, 2**31, (1 << 30) - int(rng.integers(1, 10**6))]
        length = lengths[int(rng.integers(len(lengths)))]
        head = b"VAST" + struct.pack("<Q", length)
        if i < 30:  # some stay open with 256 KiB of their frame sent: the amplification case
            s = server.connect(timeout=30)
            with contextlib.suppress(OSError):
                s.sendall(head + rng.bytes(256 << 10))
            held.append(s)
        else:
            send_and_close(server, head + rng.bytes(int(rng.integers(0, 1 << 16))))
        count("huge_lengths")
    session = Session(server)
    for _ in range(share):
        body = struct.pack("<I", int(rng.choice(CMDS))) + bytes(
            [int(rng.integers(7, 256))]) + rng.bytes(int(rng.integers(0, 16)))
        session.exchange(request_header(struct.unpack_from("<I", body)[0], len(body) - 4)
                         + body[4:])
        count("wrong_tags")
    for i in range(share):
        tag = list(Tag)[i % len(Tag)]
        params = [random_value(rng, tag) for _ in range(int(rng.integers(1, 6)))]
        session.exchange(encode_request(int(rng.choice(CMDS)), params))
        count("every_tag_type")
    for _ in range(share):
        cmd = int(rng.choice(CMDS)) if rng.random() < 0.8 else int(rng.integers(0, 2**32))
        body = rng.bytes(int(rng.integers(0, 200)))
        session.exchange(request_header(cmd, len(body)) + body)
        count("garbage_bodies")
    internal = 0
    for _ in range(2 * share):
        cmd, params = well_typed(rng)
        with contextlib.closing(server.connect(timeout=30)) as s:
            ok, payload = raw_request(s, cmd, params)
        internal += (not ok) and error_code_of(payload) == 5
        count("well_typed_commands")
    session.close()
    for s in held:
        s.close()
    counts["slow_headers"], slow_closed = slow_headers(server, 50, rng)
    counts["concurrent_connections"], answered, refused = concurrent(server, 2 * MAX_CONNECTIONS)
    return {"frames_by_category": counts, "frames_sent": sum(counts.values()),
            "internal_errors": int(internal), "malformed_replies": session.bad_replies,
            "slow_headers_closed_by_server": slow_closed,
            "concurrent_answered": answered, "concurrent_refused": refused}


def slow_headers(server: ServerProcess, n: int, rng: np.random.Generator) -> tuple[int, int]:
    """Connections that send part of a header a byte at a time, then stall."""
    socks = [server.connect(timeout=30) for _ in range(n)]
    for k in range(1, 12):
        for s in socks:
            if rng.random() < 0.8:
                with contextlib.suppress(OSError):
                    s.send(b"VAST\xff\xff\xff\xff\xff\xff\xff\xff"[k - 1:k])
        time.sleep(0.01)
    closed = 0
    for s in socks:
        s.settimeout(STALL_S + 5)
        with contextlib.suppress(OSError):
            closed += s.recv(1) == b""
        s.close()
    return n, closed


def concurrent(server: ServerProcess, n: int) -> tuple[int, int, int]:
    """``n`` connections at once (twice the cap), each sending GETINFO."""
    socks = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            socks.append(server.connect(timeout=30))
    answered = refused = 0
    for s in socks:
        try:
            s.sendall(encode_request(Cmd.GETINFO, []))
            if reply_or_close(s):
                answered += 1
            else:
                refused += 1
        except OSError:
            refused += 1
    for s in socks:
        s.close()
    return n, answered, refused


def traffic(args: argparse.Namespace, tmp: Path) -> dict:
    limits = ["--max-connections", str(MAX_CONNECTIONS), "--stall-timeout", str(STALL_S)]
    with start_server(SPEC, state_dir=tmp / "fuzz_state", extra_args=limits) as srv:
        with VastClient(srv.host, srv.port) as c:
            c.get_info()
        time.sleep(0.3)
        base = rss_bytes(srv.proc.pid)
        sampler = RssSampler(srv.proc.pid)
        sampler.start()
        t0 = time.perf_counter()
        out = hostile(srv, args.frames, np.random.default_rng(args.seed))
        out["seconds"] = round(time.perf_counter() - t0, 1)
        sampler.halt.set()
        sampler.join()
        out["server_crashes"] = int(srv.proc.poll() is not None)
        out["peak_rss_increase_mb"] = round((sampler.peak - base) / 2**20, 1)
        out["rss_baseline_mb"] = round(base / 2**20, 1)
        try:
            with VastClient(srv.host, srv.port, timeout=10) as c:
                out["valid_request_answered_at_end"] = c.get_info().data_size == VOLUME
        except (ConnectionError, OSError):
            out["valid_request_answered_at_end"] = False
    return out


# -- ADDSEGMENT rate and paint safety ------------------------------------------------------


def editing(tmp: Path) -> dict:
    prob = (1 + membrane_map_from_labels(make_synthetic(VOLUME, seed=0).instances, seed=3)
            * 254).astype(np.uint8)
    tifffile.imwrite(tmp / "prob.tif", prob, photometric="minisblack")
    with start_server(SPEC, state_dir=tmp / "edit_state") as srv, \
            VastClient(srv.host, srv.port) as c:
        layer = c.add_new_layer(2, "user work", ref=c.get_number_of_layers() - 1)
        c.set_api_layers_enabled(True)
        c.set_selected_api_layer(layer)
        n, t0 = 0, time.perf_counter()
        while n < 3000 and time.perf_counter() - t0 < 3.0:
            c.add_segment(f"bench {n}")
            n += 1
        rate = n / (time.perf_counter() - t0)
        user = c.add_segment("user strokes")
        box = Box(0, 4, 0, 128, 0, 128)
        rng = np.random.default_rng(1)
        strokes = np.zeros(box.shape, np.uint16)
        for _ in range(12):  # rectangles of user paint
            z, y, x = rng.integers(0, 4), *rng.integers(0, 100, 2)
            strokes[z, y:y + int(rng.integers(3, 28)), x:x + int(rng.integers(3, 28))] = user
        c.set_seg_image(box, strokes)
        before = c.get_seg_image(box)
        job = PaintJob(str(tmp / "prob.tif"), vast=f"vast://{srv.host}:{srv.port}", layer=layer,
                       region=RegionSpec("box", [0, 127, 0, 127, 0, 3]),
                       instances=InstanceConfig(h=0.1))
        result = run_paint(job, client=c)
        c.set_selected_api_layer(layer)
        after = c.get_seg_image(box)
    painted = before > 0
    return {"addsegment_calls_per_s": round(rate, 1), "addsegment_calls": n,
            "user_voxels": int(painted.sum()),
            "user_voxels_changed_by_painting": int((after[painted] != before[painted]).sum()),
            "voxels_painted_by_job": int(result.voxels_written),
            "voxels_kept_for_user": int(result.voxels_kept)}


# -- killed predictions --------------------------------------------------------------------


def differing_bytes(a: dict[str, bytes], b: dict[str, bytes]) -> int:
    """Bytes that differ between two folder snapshots (a missing file counts whole)."""
    diff = 0
    for key in a.keys() | b.keys():
        x, y = a.get(key, b""), b.get(key, b"")
        k = min(len(x), len(y))
        diff += abs(len(x) - len(y)) + int(np.count_nonzero(
            np.frombuffer(x[:k], np.uint8) != np.frombuffer(y[:k], np.uint8)))
    return diff


def killed_predictions(tmp: Path, kill_after: list[int]) -> dict:
    shape, tile = (4, 300, 400), 128
    ckpt = tiny_checkpoint(tmp / "tiny.pt")
    n_tiles = shape[0] * -(-shape[1] // tile) * -(-shape[2] // tile)
    with start_server("synthetic:{}x{}x{}".format(*shape), state_dir=tmp / "pred_state") as srv:
        def job(out: Path) -> PredictJob:
            return PredictJob(checkpoint=str(ckpt), source=f"vast://{srv.host}:{srv.port}",
                              out=str(out), outputs=["probability", "classes"], tile=tile,
                              chunk=[2, 256, 256], margin=32)

        run_prediction(job(tmp / "reference"))
        reference = folder_bytes(tmp / "reference")
        runs = []
        for i, after in enumerate(kill_after):
            out = tmp / f"killed{i}"
            cmd = [sys.executable, "-c", "from membrane_py.cli import app; app()", "predict",
                   str(ckpt), "--source", f"vast://{srv.host}:{srv.port}", "--out", str(out),
                   "--outputs", "probability,classes", "--tile", str(tile),
                   "--chunk", "256,256,2", "--margin", "32"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while (len(tile_keys(out / "probability", 0)) < after and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            at_kill = len(tile_keys(out / "probability", 0))
            result = run_prediction(job(out))
            runs.append({"tiles_at_kill": at_kill, "killed": proc.returncode == -signal.SIGKILL,
                         "tiles_resumed": result.tiles_resumed,
                         "differing_bytes": differing_bytes(reference, folder_bytes(out))})
    return {"tiles_per_run": n_tiles, "files_compared": len(reference), "runs": runs,
            "differing_bytes": sum(r["differing_bytes"] for r in runs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=10_000, help="hostile frames to send (about)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_robust_") as d:
        tmp = Path(d)
        report = {"hostile_traffic": traffic(args, tmp), "editing": editing(tmp),
                  "killed_predictions": killed_predictions(tmp, [3, 20])}
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
