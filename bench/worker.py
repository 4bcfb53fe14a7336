"""Benchmark: what running jobs through the worker process costs. Prints one JSON object.

- ``start_s``: ``WorkerClient.start_local`` until the worker answers (best of
  ``--repeats``), and ``preload_s`` until it has imported every job's module;
- ``request_ms``: round trip of a ``ping`` request (median and 95th percentile of 200),
  once the worker has preloaded;
- ``job``: the same prediction (a tiny random U-Net over a noise TIFF, one event per tile)
  run in this process and through the worker, interleaved, best of ``--repeats`` each, with
  the worker's events received over pyzmq; ``overhead`` is their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.jobs import run
from membrane_py.jobs.client import WorkerClient
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.predict.job import PredictJob
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = UNetConfig(depth=2, base_filters=4, norm="none")
    return save_checkpoint(path, Checkpoint(state_dict=UNet(cfg).state_dict(), model=cfg.to_dict(),
                                            class_names=["non-membrane", "membrane"],
                                            preprocess=PreprocessConfig().to_dict()))


def main(repeats: int = 2, sections: int = 4) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_worker_"))
    try:
        model = tiny_model(tmp / "tiny.pt")
        source = tmp / "noise.tif"
        shape = (sections, 512, 512)
        tifffile.imwrite(source, np.random.default_rng(0).integers(0, 256, shape, np.uint8))

        def spec(out: str) -> PredictJob:
            return PredictJob(checkpoint=str(model), source=str(source), out=str(tmp / out),
                              tile=128, chunk=[1, 128, 128], margin=32, pyramid=False)

        starts, preloads = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            client = WorkerClient.start_local(tmp / f"start{i}")
            starts.append(time.perf_counter() - t0)
            while not client.ping()["preloaded"]:
                time.sleep(0.05)
            preloads.append(time.perf_counter() - t0)
            if i < repeats - 1:
                client.close(stop_worker=True)
        try:
            pings = []
            for _ in range(200):
                t0 = time.perf_counter()
                client.ping()
                pings.append((time.perf_counter() - t0) * 1e3)
            local, remote, n_events = [], [], 0
            for i in range(repeats):
                t0 = time.perf_counter()
                run(spec(f"local{i}"))
                local.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                events = list(client.watch(client.submit(spec(f"worker{i}"))))
                remote.append(time.perf_counter() - t0)
                assert events[-1].kind == "done", events[-1].message
                n_events = len(events)
        finally:
            client.close(stop_worker=True)
        return {
            "start_s": round(min(starts), 3), "preload_s": round(min(preloads), 3),
            "request_ms": {"median": round(statistics.median(pings), 3),
                           "p95": round(float(np.percentile(pings, 95)), 3)},
            "job": {"volume": list(shape), "tiles": sections * 16, "events": n_events,
                    "in_process_s": round(min(local), 3), "worker_s": round(min(remote), 3),
                    "overhead": round(min(remote) / min(local), 3)},
            "repeats": repeats,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sections", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(main(args.repeats, args.sections), indent=2))
