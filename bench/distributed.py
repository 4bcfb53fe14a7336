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
which one Dask worker with one thread does not); the 2-worker run gets two. Each timing is
the best of ``--repeats`` rounds. ``per_block_s`` is the single-process seconds per block
(``chunk`` sections x chunk y x chunk x), the unit of the estimate in docs/scaling.md.
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
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would hide the
# `distributed` package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import torch  # noqa: E402

from membrane_py.augment.preprocess import PreprocessConfig  # noqa: E402
from membrane_py.distributed.cluster import connect  # noqa: E402
from membrane_py.distributed.predict import predict_on_cluster  # noqa: E402
from membrane_py.geometry import Box  # noqa: E402
from membrane_py.models.unet import UNet, UNetConfig  # noqa: E402
from membrane_py.predict.job import PredictJob  # noqa: E402
from membrane_py.predict.runner import load_job_predictor, run_prediction  # noqa: E402
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from membrane_py.volumes.synthetic import make_synthetic  # noqa: E402
from membrane_py.volumes.tiles import TileWriter  # noqa: E402


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
    ap.add_argument("--repeats", type=int, default=1)
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

        def keep(name: str, seconds: float) -> None:
            best[name] = min(best.get(name, float("inf")), seconds)

        for workers in (1, 2):
            pin(workers)
            with connect(f"local:{workers}") as client:
                address = client.scheduler.address
                predict_on_cluster(job(scheduler=address))  # warm-up: imports, model
                for _ in range(args.repeats):
                    if workers == 1:
                        pin(1)
                        keep("single", timed(lambda: run_prediction(job(), predictor=predictor)))
                    keep(f"dask_{workers}",
                         timed(lambda a=address: predict_on_cluster(job(scheduler=a))))
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
            "scaling": round(tp["dask_2"] / tp["dask_1"], 3),
            "overhead": round(tp["dask_1"] / tp["single"], 3),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
