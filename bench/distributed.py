"""Benchmark: whole-volume prediction on a Dask LocalCluster against the single-process runner.
Prints one JSON object; every number comes from runs on this machine.

The source is a synthetic EM volume written as a ``.vsvi`` PNG tile stack (the cluster path:
workers read the tiles themselves); the network is the light U-Net with random weights on
the CPU, ONNX Runtime with one thread per worker (PyTorch's threads also set to 1).

- ``single``: :func:`run_prediction` in this process, its predictor capped to one thread;
- ``dask_1`` / ``dask_2``: the same job on a LocalCluster of 1 and 2 worker processes (one
  thread each), timed after a warm-up job has loaded the libraries in every worker;
- ``scaling`` = throughput 2 workers / 1 worker; ``overhead`` = Dask at 1 worker / single.

On Linux the one-worker runs and the single-process run are pinned to one core (the
single-process runner's reader and writer threads would otherwise use the second core,
which one Dask worker with one thread does not); the 2-worker run gets two. Both clusters
stay up and the three runs are interleaved; each timing is the best of ``--repeats``
rounds. ``per_block_s`` is the single-process seconds per block (``chunk`` sections x
chunk y x chunk x); ``tile_1024_io_one_core`` the cost of writing and reading one full-size
tile; both feed the estimate in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would hide the
# `distributed` package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import torch  # noqa: E402

from membrane_py.augment.preprocess import PreprocessConfig  # noqa: E402
from membrane_py.codes import read_png  # noqa: E402
from membrane_py.distributed.cluster import connect  # noqa: E402
from membrane_py.distributed.predict import predict_on_cluster  # noqa: E402
from membrane_py.geometry import Box  # noqa: E402
from membrane_py.models.unet import UNet, UNetConfig  # noqa: E402
from membrane_py.predict.job import PredictJob  # noqa: E402
from membrane_py.predict.runner import load_job_predictor, run_prediction  # noqa: E402
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from membrane_py.volumes.synthetic import make_synthetic  # noqa: E402
from membrane_py.volumes.tiles import TileWriter, tile_path  # noqa: E402


def make_inputs(root: Path, shape: tuple[int, int, int], tile: int) -> tuple[Path, Path]:
    """A synthetic EM tile stack with its .vsvi, and a light U-Net checkpoint."""
    em = make_synthetic(shape, 0).em
    writer = TileWriter(root / "em", shape, 0, tile)
    writer.write_block(Box.full(shape), em)
    vsvi = writer.write_descriptor(root / "em.vsvi", (30.0, 8.0, 8.0), "synthetic EM")
    torch.manual_seed(0)
    cfg = UNetConfig.light()
    ckpt = save_checkpoint(root / "light.pt", Checkpoint(
        state_dict=UNet(cfg).state_dict(), model=cfg.to_dict(),
        class_names=["non-membrane", "membrane"], preprocess=PreprocessConfig().to_dict()))
    return vsvi, ckpt


def tile_io(root: Path, n: int = 16) -> dict:
    """Milliseconds to encode and atomically write, and to read and decode, one 1024^2
    8-bit PNG tile of synthetic EM (a block of 16 sections writes 16 per output): wall
    clock, and this thread's CPU time, which other processes on the machine barely change."""
    section = make_synthetic((1, 1024, 1024), 1).em[0]
    writer = TileWriter(root / "io", (n, 1024, 1024), 0, 1024)
    out = {}
    for name, fn in (("write", lambda z: writer.write_tile(0, z, 0, 0, section)),
                     ("read", lambda z: read_png(tile_path(root / "io", 0, z, 0, 0)))):
        cpu = time.thread_time()
        wall = timed(lambda f=fn: [f(z) for z in range(n)])
        out[f"{name}_ms"] = round(1e3 * wall / n, 2)
        out[f"{name}_cpu_ms"] = round(1e3 * (time.thread_time() - cpu) / n, 2)
    return out


def pin(cores: int) -> bool:
    """Restrict this process (and the processes it starts) to the first ``cores`` cores."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0) | set(range(os.cpu_count())))
                                [:cores]))
    return True


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="8,1024,1024", help="z,y,x of the synthetic volume")
    ap.add_argument("--chunk", default="4,512,512", help="z,y,x of one block")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    chunk = [int(v) for v in args.chunk.split(",")]
    tile = chunk[1]
    root = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    torch.set_num_threads(1)
    try:
        vsvi, ckpt = make_inputs(root, shape, tile)
        mb = shape[0] * shape[1] * shape[2] / 1e6
        n_blocks = (-(-shape[0] // chunk[0])) * (-(-shape[1] // chunk[1])) \
            * (-(-shape[2] // chunk[2]))
        runs = iter(range(10**6))

        def job(**kw) -> PredictJob:
            return PredictJob(checkpoint=str(ckpt), source=str(vsvi),
                              out=str(root / f"out{next(runs)}"), chunk=chunk, tile=tile,
                              margin=64, backend="onnx", **kw)

        pinned = pin(1)
        predictor = load_job_predictor(job(), threads=1)
        run_prediction(job(), predictor=predictor)  # warm-up
        best: dict[str, float] = {}
        with ExitStack() as stack:
            address = {}
            for workers in (1, 2):  # workers inherit the affinity of the moment they start
                pin(workers)
                client = stack.enter_context(connect(f"local:{workers}"))
                address[workers] = client.scheduler.address
                predict_on_cluster(job(scheduler=address[workers]))  # warm-up: imports, model
            runs_of = {"single": (1, lambda: run_prediction(job(), predictor=predictor)),
                       "dask_1": (1, lambda: predict_on_cluster(job(scheduler=address[1]))),
                       "dask_2": (2, lambda: predict_on_cluster(job(scheduler=address[2])))}
            for _ in range(args.repeats):  # interleaved, so load from others hits all alike
                for name, (cores, fn) in runs_of.items():
                    pin(cores)
                    best[name] = min(best.get(name, float("inf")), timed(fn))
        pin(1)
        io = tile_io(root)
        tp = {k: mb / v for k, v in best.items()}
        return {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                        "torch": torch.__version__, "pinned_one_core": pinned},
            "volume": {"shape_zyx": list(shape), "megabytes": mb, "chunk_zyx": chunk,
                       "blocks": n_blocks, "model": "light U-Net, ONNX Runtime, CPU, 1 thread"},
            "seconds": {k: round(v, 3) for k, v in best.items()},
            "mb_per_s": {k: round(v, 3) for k, v in tp.items()},
            "per_block_s": round(best["single"] / n_blocks, 3),
            "tile_1024_io_one_core": io,
            "scaling": round(tp["dask_2"] / tp["dask_1"], 3),
            "overhead": round(tp["dask_1"] / tp["single"], 3),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
