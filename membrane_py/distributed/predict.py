"""Whole-volume prediction as Dask tasks: one task per block of the job's tile plan.

The client process does what the single-process runner does before and after the chunks
(:func:`~membrane_py.predict.runner.prepare_run`: open the source, plan the tiles, claim the
output folder, write the descriptors; :func:`~membrane_py.predict.runner.finish_run`), and
hands the blocks of :meth:`TilePlan.chunks <membrane_py.volumes.blocks.TilePlan.chunks>` to the
cluster. Each block task runs on a worker that opens the source itself (its own VAST
connection, or the image tiles, zarr or HDF5 directly), reads the block with the job's margin,
predicts it with :func:`~membrane_py.predict.runner.predict_block` and writes its tiles
(atomic PNGs; a block whose tiles all exist is skipped, so reruns continue). Once every
block of a z block is done, one more task builds that z block's mip pyramid with the
runner's writer code; the descriptors are rewritten when all tasks have finished. The output
is byte-identical to the single-process runner's.

The network file travels once per worker: a worker plugin carries its bytes, writes them
into the worker's local folder at start-up (also on workers that join or restart later), and
each worker process keeps one loaded predictor, one open source and one writer between tasks.
Tasks that raise are retried (:data:`RETRIES`); tasks of a worker that died are rescheduled
by Dask. At most a few tasks per worker thread are in flight, so a 20 TB plan never sits in
the scheduler at once, and cancelling stops within one poll.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.geometry import Box
from membrane_py.infer.predictor import Predictor
from membrane_py.jobs.spec import SpecError
from membrane_py.predict.job import PredictJob
from membrane_py.predict.runner import (
    TASK,
    PredictResult,
    Tally,
    finish_run,
    load_job_predictor,
    open_em,
    predict_block,
    prepare_run,
    run_prediction,
)
from membrane_py.predict.writers import PredictionWriter, make_outputs
from membrane_py.volumes.base import VolumeSource
from membrane_py.volumes.blocks import Block, TileKey, TilePlan, read_chunks

if TYPE_CHECKING:
    from distributed import Client, Future

    from membrane_py.train.checkpoint import Checkpoint

#: how often a failing task is retried before the run fails with its error
RETRIES = 3
#: tasks in flight per worker thread: enough to keep workers busy between polls
TASKS_PER_THREAD = 3
#: seconds between checks for results, cancellation and a changed number of workers
POLL = 0.05
WORKERS_POLL = 5.0


@dataclass(frozen=True)
class RunInfo:
    """What a worker needs besides the block: the job (as JSON), the shipped network file
    (by the SHA-256 of its bytes) and its weights digest, and the facts the client already
    checked (volume shape and voxel size, class names)."""

    job: str
    model_file: str
    weights: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class BlockDone:
    """A finished block task: the tiles it wrote and how many were blank or already done."""

    written: tuple[TileKey, ...]
    blank: int
    resumed: int
    nbytes: int


# ---------------------------------------------------------------- in each worker process

#: the last network a worker process loaded, by what decides it (file, backend, device,
#: engine tile): consecutive runs of one model reuse it
_LOADED: dict[tuple, Predictor] = {}


def _load_predictor(info: RunInfo, job: PredictJob) -> Predictor:
    """The shipped network, loaded once per worker process with its threads capped to the
    worker's (so worker processes on one machine do not compete for cores)."""
    import torch
    from distributed import get_worker

    from membrane_py.distributed.model import MODEL_FILES

    key = (info.model_file, job.backend, job.device, max(job.chunk[1:]) + 2 * job.margin)
    if key not in _LOADED:
        path = MODEL_FILES.get(info.model_file)
        if path is None:
            raise RuntimeError("the network file did not reach this worker (its plugin was "
                               "not set up); rerun the job")
        threads = get_worker().state.nthreads
        torch.set_num_threads(threads)
        _LOADED.clear()
        _LOADED[key] = load_job_predictor(job, path, threads=threads)
    predictor = _LOADED[key]
    if predictor.model_sha256 != info.weights:
        raise ValueError(f"the network on the workers ({predictor.model_sha256[:12]}) is not "
                         f"the one checked ({info.weights[:12]}): {job.checkpoint} changed "
                         "during the run; rerun it")
    return predictor


class _Worker:
    """One run's state in a worker process: predictor, open source and writer, kept
    between tasks (a worker serves one run at a time; another run replaces it)."""

    current: _Worker | None = None

    def __init__(self, info: RunInfo) -> None:
        self.info = info
        self.job = PredictJob.from_dict(json.loads(info.job))
        self.writer = PredictionWriter(
            self.job.out, make_outputs(self.job, list(info.class_names)), info.shape,
            self.job.mip, self.job.tile, info.voxel_size, self.job.pyramid, self.job.zarr,
            shared=True)
        self._predictor: Predictor | None = None
        self._volume: VolumeSource | None = None
        self._stack = ExitStack()

    @classmethod
    def get(cls, info: RunInfo) -> _Worker:
        if cls.current is None or cls.current.info != info:
            if cls.current is not None:
                cls.current.close()
            cls.current = cls(info)
        return cls.current

    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = _load_predictor(self.info, self.job)
        return self._predictor

    def volume(self) -> VolumeSource:
        if self._volume is None:  # VAST only as the source; the client did the rest
            self._volume, _ = open_em(replace(self.job, vast=None), self._stack)
        return self._volume

    def close(self) -> None:
        """Close the source (a broken VAST connection is reopened by the next task)."""
        self._stack.close()
        self._volume = None

    def predict(self, block: Block) -> BlockDone:
        job, writer = self.job, self.writer
        if not job.overwrite and block.done(writer.done):
            return BlockDone((), 0, len(block.tiles), 0)
        volume, m = self.volume(), job.margin
        try:
            chunk = next(read_chunks(lambda b: volume.read(b, job.mip), [block.core],
                                     volume.shape_at(job.mip), (0, m, m), prefetch=0))
        except Exception:
            self.close()
            raise
        done = predict_block(job, block, chunk, self.predictor(), writer.done)
        if done.keys:
            writer.write(block.core, done.sections, done.probs, done.keys, done.spread)
        return BlockDone(tuple(done.keys), done.blank, done.resumed, chunk.data.nbytes)


def predict_block_task(info: RunInfo, block: Block) -> BlockDone:
    """Dask task: predict and write one block (skipped when its tiles all exist)."""
    return _Worker.get(info).predict(block)


def pyramid_task(info: RunInfo, keys: list[TileKey], written: set[TileKey]) -> int:
    """Dask task: the pyramid above ``keys`` (one z block), as the single-process runner
    builds it; returns the number of parent tiles built."""
    return _Worker.get(info).writer.build_pyramid(keys, written)


# ---------------------------------------------------------------- in the client process


def run_predict(job: PredictJob, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None,
                predictor: Predictor | None = None) -> PredictResult:
    """The ``predict`` job kind: on the job's Dask ``scheduler`` when it names one, else
    in this process (:func:`~membrane_py.predict.runner.run_prediction`)."""
    if job.scheduler is None:
        return run_prediction(job, progress, cancel, predictor)
    return predict_on_cluster(job.per_model()[0], progress, cancel)


def predict_on_cluster(job: PredictJob, progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None) -> PredictResult:
    """Predict the job's region block by block on ``job.scheduler`` (see the module
    docstring). Raises :class:`~membrane_py.events.Cancelled` when ``cancel`` is set; what
    was written stays and a rerun continues from there."""
    from membrane_py.distributed.cluster import connect
    from membrane_py.distributed.model import ModelFile
    from membrane_py.infer.batchnorm import settle_adapt_bn
    from membrane_py.infer.engine import load_predictor
    from membrane_py.train.checkpoint import model_path

    if job.scheduler is None:
        raise SpecError("predict_on_cluster needs a job with a scheduler (e.g. 'local')")
    start = time.perf_counter()
    job = replace(job, adapt_bn=settle_adapt_bn(job.adapt_bn, job.checkpoint))
    with ExitStack() as stack:
        # the client needs only the class names and the weights digest: PyTorch on the CPU
        # gives both without exporting to ONNX or touching a GPU
        path = model_path(job.checkpoint)
        model, data = (adapted_checkpoint(job) if job.adapt_bn
                       else (path, path.read_bytes()))
        onnx = path.suffix.lower() == ".onnx"
        model_info = load_predictor(model, backend="onnx" if onnx else "torch",
                                    device="cpu", threads=1)
        prepared = prepare_run(job, stack, model_info, progress)
        client = stack.enter_context(connect(job.scheduler))
        plugin = ModelFile(data, path.suffix)
        client.register_plugin(plugin, name=plugin.name)
        # the scheduler keeps the bytes for workers that join later; release them after
        stack.callback(client.unregister_worker_plugin, plugin.name)
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        report(progress, Event.log(f"Dask cluster at {client.scheduler.address}: {workers} "
                                   f"worker(s), network shipped once to each", TASK))
        volume = prepared.volume
        # the workers run the shipped network as it is (adapted here when asked)
        info = RunInfo(replace(job, adapt_bn=False).to_json(), plugin.sha256,
                       prepared.predictor.model_sha256,
                       tuple(volume.shape), tuple(prepared.writer.voxel_size),
                       tuple(prepared.predictor.class_names))
        tally = Tally(prepared.plan.n_tiles, progress)
        try:
            _run_tasks(client, info, job, prepared.plan, tally, cancel)
        finally:  # what the workers wrote shows in VAST, also after a cancel
            if prepared.refresher is not None:
                prepared.refresher.add(Box.full(volume.shape))
                prepared.refresher.flush()
        prepared.writer.remove_temporaries()  # of workers killed mid-write
    return finish_run(prepared, tally, start, progress)


def adapted_checkpoint(job: PredictJob) -> tuple[Checkpoint, bytes]:
    """The job's network with its batch norm adapted to the job's EM, as the single-process
    runner adapts it (the same patches, so the same tiles), and the bytes of its file for
    the workers."""
    from membrane_py.infer.batchnorm import ADAPT_PATCHES, adapt_batch_norm
    from membrane_py.predict.runner import calibration_em
    from membrane_py.train.checkpoint import load_checkpoint, save_checkpoint

    with ExitStack() as stack:
        volume, _ = open_em(job, stack)
        ck = adapt_batch_norm(load_checkpoint(job.checkpoint),
                              calibration_em(job, volume, n=ADAPT_PATCHES))
    with tempfile.TemporaryDirectory() as tmp:
        return ck, save_checkpoint(Path(tmp) / "adapted.pt", ck).read_bytes()


class _Window:
    """The in-flight futures, topped up to a few per worker thread."""

    def __init__(self, client: Client) -> None:
        from distributed import as_completed

        self.client = client
        self.done = as_completed()
        self.futures: set[Future] = set()
        self._size, self._checked = 0, 0.0

    def room(self) -> bool:
        now = time.monotonic()
        if now - self._checked > WORKERS_POLL:  # clusters may grow or shrink (adaptive)
            threads = sum(self.client.nthreads().values())
            self._size, self._checked = max(2, TASKS_PER_THREAD * threads), now
        return len(self.futures) < self._size

    def submit(self, fn, *args) -> Future:
        future = self.client.submit(fn, *args, retries=RETRIES, pure=False)
        self.futures.add(future)
        self.done.add(future)
        return future

    def finished(self) -> Iterator[Future]:
        """The futures done since the last call (waits up to one poll)."""
        batch = self.done.next_batch(block=False)
        if not batch:
            time.sleep(POLL)
        for future in batch:
            self.futures.discard(future)
            yield future

    def cancel(self) -> None:
        if self.futures:
            self.client.cancel(list(self.futures))


def _run_tasks(client: Client, info: RunInfo, job: PredictJob, plan: TilePlan, tally: Tally,
               cancel: CancelToken | None) -> None:
    """Submit block tasks (and each finished z block's pyramid task) and count results."""
    chunk = tuple(job.chunk)
    cz = chunk[0]
    remaining = Counter(b.z_block for b in plan.chunks(chunk))
    written: dict[int, set[TileKey]] = defaultdict(set)
    blocks = plan.chunks(chunk)
    z_block_of: dict[Future, int] = {}
    window = _Window(client)
    pending = True
    try:
        while pending or window.futures:
            check_cancel(cancel)
            while pending and window.room():
                block = next(blocks, None)
                if block is None:
                    pending = False
                    break
                z_block_of[window.submit(predict_block_task, info, block)] = block.z_block
            for future in window.finished():
                result = future.result()  # re-raises the task's error after its retries
                k = z_block_of.pop(future, None)
                if k is None:  # a pyramid task
                    tally.add(pyramid=result)
                    continue
                tally.add(written=len(result.written), blank=result.blank,
                          resumed=result.resumed, nbytes=result.nbytes)
                remaining[k] -= 1
                if not job.pyramid:
                    continue
                written[k].update(result.written)
                if remaining[k] == 0:
                    window.submit(pyramid_task, info, plan.tiles(k * cz, (k + 1) * cz),
                                  written.pop(k))
    except BaseException:
        window.cancel()
        raise
