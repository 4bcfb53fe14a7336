"""Benchmark: how fast `membrane follow` shows a moved VAST view. Prints one JSON object.

A mock VAST server serves a synthetic volume; the follow job (light U-Net, random weights:
speed does not depend on them) follows its view in a thread. After the first view's visible
tiles are written (the job has moved on to the sections around it), the view jumps to
another place and section; the benchmark records the seconds from that move to the first
and to the last visible tile of the new view written (tiles on disk, layer refresh asked),
and how long the job took to notice the move. The view moves just after the job started
predicting a tile near the old view, the worst case: that tile is finished first (the job
checks the view between tiles, at most every ``--poll`` seconds). Repeated for ``--moves``
jumps; the summary gives the median and the worst.

The viewport is the job's assumed VAST window (``--viewport``, default 1920 x 1080 screen
pixels at the displayed mip, mip 0 here): with 1024 px tiles and the default 3072 px
sections, the view centre (1536, 2048) sees 3 x 2 tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time

import torch

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.events import Cancelled, CancelToken, Event
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.predict.follow import FollowJob, run_follow
from membrane_py.predict.job import PredictJob
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint
from membrane_py.vastapi.client import VastClient
from mock_vast_server.launch import start_server


def light_checkpoint(path: str) -> str:
    torch.manual_seed(0)
    cfg = UNetConfig.light()
    net = UNet(cfg)
    return str(save_checkpoint(path, Checkpoint(
        state_dict=net.state_dict(), model=cfg.to_dict(),
        class_names=["non-membrane", "membrane"], preprocess=PreprocessConfig().to_dict())))


class Recorder:
    """Collects the job's events with their arrival time; wakes waiters on each one."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.changed = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self.changed:
            self.events.append((time.monotonic(), event))
            self.changed.notify_all()

    def wait_tile_started(self, after: int, timeout: float) -> None:
        """Until a tile starts after the first ``after`` events."""
        with self.changed:
            if not self.changed.wait_for(lambda: any(
                    e.data.get("stage") == "predicting" for _, e in self.events[after:]),
                    timeout):
                raise TimeoutError(f"no tile started in {timeout:.0f} s")

    def wait_visible_done(self, view_index: int, timeout: float) -> list[tuple[float, Event]]:
        """Events from the ``view_index``-th view change up to its last visible tile."""
        deadline = time.monotonic() + timeout

        def done() -> list | None:
            views = [i for i, (_, e) in enumerate(self.events)
                     if e.kind == "log" and "queued" in e.data]
            if len(views) <= view_index:
                return None
            start = views[view_index]
            end = views[view_index + 1] if len(views) > view_index + 1 else len(self.events)
            part = self.events[start:end]
            visible = part[0][1].data["visible"]
            shown = [e for _, e in part if e.kind == "progress"
                     and e.data.get("stage") == "written" and e.data.get("group") == 0]
            return part if len(shown) >= visible else None

        with self.changed:
            while (part := done()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"view {view_index}: visible tiles not written in "
                                       f"{timeout:.0f} s")
                self.changed.wait(left)
            return part


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=3072, help="section side of the volume (px)")
    p.add_argument("--moves", type=int, default=3)
    p.add_argument("--viewport", default="1920,1080")
    p.add_argument("--poll", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads (ONNX Runtime uses "
                   "its own pool)")
    p.add_argument("--timeout", type=float, default=600.0, help="per view, seconds")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.viewport.split(","))
    # view centres inside tiles, three sections apart: no view's tiles (its section and the
    # ones next to it) were predicted for an earlier view
    z, size = 3 * args.moves + 4, args.size
    spots = [(size // 2, size // 2 + 512, 1 + 3 * i) for i in range(args.moves + 1)]
    moves = []
    with tempfile.TemporaryDirectory() as tmp, \
            start_server(f"synthetic:{z}x{size}x{size}", state_dir=f"{tmp}/state",
                         allow_load=[tmp], timeout=900) as srv, \
            VastClient(srv.host, srv.port) as vast:
        vast.set_view_zoom(0)
        vast.set_view_coordinates(*spots[0])
        job = FollowJob(predict=PredictJob(
            checkpoint=light_checkpoint(f"{tmp}/light.pt"), source=f"vast://{srv.host}:{srv.port}",
            out=f"{tmp}/follow", device=args.device, chunk=[1, 1024, 1024], load_in_vast=True),
            viewport=[w, h], sections=1, margin=1, poll=args.poll)
        rec, token = Recorder(), CancelToken()
        failure: list[BaseException] = []

        def follow() -> None:
            try:
                run_follow(job, rec, token)
            except Cancelled:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)
                with rec.changed:
                    rec.changed.notify_all()

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            rec.wait_visible_done(0, args.timeout)
            for i, spot in enumerate(spots[1:], start=1):
                with rec.changed:
                    seen = len(rec.events)
                rec.wait_tile_started(seen, args.timeout)  # the worst case: a tile in flight
                moved = time.monotonic()
                vast.set_view_coordinates(*spot)
                part = rec.wait_visible_done(i, args.timeout)
                noticed = part[0][0]
                shown = [t for t, e in part if e.kind == "progress"
                         and e.data.get("stage") == "written" and e.data.get("group") == 0]
                moves.append({"to": list(spot), "visible_tiles": part[0][1].data["visible"],
                              "noticed_s": round(noticed - moved, 3),
                              "first_visible_s": round(shown[0] - moved, 2),
                              "all_visible_s": round(shown[-1] - moved, 2)})
        finally:
            token.cancel()
            thread.join(60)
        if failure:
            raise failure[0]
    firsts = [m["first_visible_s"] for m in moves]
    alls = [m["all_visible_s"] for m in moves]
    return {"benchmark": "follow", "volume": [z, size, size], "tile": 1024,
            "viewport": [w, h], "poll_s": args.poll, "model": UNetConfig.light().to_dict(),
            "device": args.device, "moves": moves,
            "first_visible_s": {"median": statistics.median(firsts), "max": max(firsts)},
            "all_visible_s": {"median": statistics.median(alls), "max": max(alls)},
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                        else None,
                        "load_average": [round(x, 2) for x in os.getloadavg()]}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
