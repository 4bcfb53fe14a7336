"""The volume runner: predict a region of any volume source chunk by chunk, on the fly.

Three stages overlap through bounded queues, so memory stays bounded: a reader thread
fetches the next chunks (with ``margin`` px of context; :func:`read_chunks`), the calling
thread runs the network, and a writer thread encodes and writes tiles and, after each z
block, the pyramid above it. Chunks whose tiles all exist as complete PNGs are skipped
before reading; blank tiles (grey-level entropy below ``blank_entropy`` bits, as mEMbrain)
are neither predicted nor written. A chunk is always predicted whole, with the same input
as in an uninterrupted run, so a killed and restarted run ends byte-identical to it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from membrane_py.events import CancelToken, Event, ProgressCallback, report, warn
from membrane_py.geometry import Box
from membrane_py.infer.batchnorm import ADAPT_PATCHES, settle_adapt_bn
from membrane_py.infer.predictor import Predictor
from membrane_py.jobs.spec import Result
from membrane_py.predict.identity import claim_output
from membrane_py.predict.job import PredictJob
from membrane_py.predict.regions import plan_region
from membrane_py.predict.vastload import LayerRefresher, load_or_reuse, reload_layers
from membrane_py.predict.writers import PredictionWriter, make_outputs
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.base import VolumeSource, output_voxel_size
from membrane_py.volumes.blocks import Block, Chunk, TileKey, TilePlan, read_chunks
from membrane_py.volumes.open import open_source

TASK = "predict"


@dataclass
class PredictResult(Result):
    """What a run wrote (paths absolute) and how it went; tile counts are at the predicted
    mip and add up to ``tiles_total``."""

    out: Path
    descriptors: list[Path]
    zarr: list[Path]
    layers: list[int]  # VAST layer numbers of the loaded outputs
    tiles_total: int
    tiles_written: int
    tiles_blank: int
    tiles_resumed: int
    pyramid_tiles: int
    megabytes_read: float
    seconds: float

    def summary(self) -> str:
        lines = [f"{self.tiles_written} tiles written, {self.tiles_blank} blank, "
                 f"{self.tiles_resumed} already done, {self.pyramid_tiles} pyramid tiles; "
                 f"{self.megabytes_read:.0f} MB read in {self.seconds:.1f} s",
                 f"output folder: {self.out}"]
        lines += [f"VAST descriptor: {p}" for p in self.descriptors]
        lines += [f"OME-Zarr: {p}" for p in self.zarr]
        if self.layers:
            lines.append(f"loaded into VAST as layer(s) {', '.join(map(str, self.layers))}")
        return "\n".join(lines)


def entropy_bits(image: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin grey-level histogram of a uint8 image."""
    counts = np.bincount(image.ravel(), minlength=256)
    p = counts[counts > 0] / image.size
    return float(-(p * np.log2(p)).sum())


def is_blank(image: np.ndarray, min_entropy: float) -> bool:
    """All zeros or nearly uniform (entropy below ``min_entropy``): nothing to predict."""
    return not image.any() or entropy_bits(image) < min_entropy


def open_em(job: PredictJob, stack: ExitStack) -> tuple[VolumeSource, VastClient | None]:
    """The job's EM volume and, when one is named, a connected VAST client (both closed
    with ``stack``)."""
    address = job.vast_address
    client = stack.enter_context(VastClient(*address)) if address else None
    volume = stack.enter_context(open_source(job.source, job.layer, client=client))
    if volume.channels != 1 or np.dtype(volume.dtype) != np.uint8:
        raise ValueError(f"{volume.name} is {np.dtype(volume.dtype).name} with {volume.channels} "
                         "channel(s); prediction needs 8-bit grayscale EM (pick the EM layer "
                         "with layer / --layer, or convert the data)")
    if not 0 <= job.mip < volume.n_mips:
        raise ValueError(f"mip {job.mip} does not exist: {volume.name} has mip levels "
                         f"0..{volume.n_mips - 1}")
    return volume, client


def calibration_em(job: PredictJob, volume: VolumeSource, n: int = 8, side: int = 256,
                   seed: int = 0) -> np.ndarray:
    """(n, side, side) uint8 EM patches, not blank, at random places of the job's
    ``calibration`` volume or image folder, else of ``volume`` itself (at the job's mip);
    what int8 quantisation calibrates on and batch-norm adaptation adapts to."""
    with ExitStack() as stack:
        if job.calibration is not None:
            volume = stack.enter_context(open_source(job.calibration))
        mip = job.mip if job.calibration is None else 0
        z, h, w = volume.shape_at(mip)
        sy, sx = min(side, h), min(side, w)
        rng = np.random.default_rng(seed)
        patches = []
        for _ in range(16 * n):
            z0, y0, x0 = rng.integers(z), rng.integers(h - sy + 1), rng.integers(w - sx + 1)
            patch = volume.read(Box(z0, z0 + 1, y0, y0 + sy, x0, x0 + sx), mip)
            if not is_blank(patch[0], job.blank_entropy):
                patches.append(patch[0])
            if len(patches) == n:
                break
    if not patches:
        raise ValueError(f"no EM to calibrate int8 on: {volume.name} looks blank; give "
                         "sample EM with calibration (--calibration FOLDER)")
    return np.stack(patches)


def _clock(seconds: float) -> str:
    """Seconds as h:mm:ss (hours unbounded)."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Tally:
    """Thread-safe tile counters; every change becomes one progress event."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.total, self.progress = total, progress
        self.written = self.blank = self.resumed = self.pyramid = self.nbytes = 0
        self.start = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, written: int = 0, blank: int = 0, resumed: int = 0, pyramid: int = 0,
            nbytes: int = 0) -> None:
        with self._lock:
            self.written += written
            self.blank += blank
            self.resumed += resumed
            self.pyramid += pyramid
            self.nbytes += nbytes
            if self.progress is None:
                return
            seconds = max(time.perf_counter() - self.start, 1e-9)
            processed = self.written + self.blank
            done = processed + self.resumed
            eta = (self.total - done) * seconds / processed if processed else float("nan")
            mb_s = self.nbytes / 1e6 / seconds
            when = f"ETA {_clock(eta)}" if processed else "ETA ?"
            report(self.progress, Event.progress(
                TASK, done, self.total, f"{done}/{self.total} tiles, {mb_s:.1f} MB/s, {when}",
                mb_s=mb_s, eta_s=eta, written=self.written, blank=self.blank,
                resumed=self.resumed, pyramid=self.pyramid))


class _WriterThread:
    """Writes predicted chunks and builds each finished z block's pyramid, in order."""

    def __init__(self, writer: PredictionWriter, plan: TilePlan, chunk_z: int, pyramid: bool,
                 tally: Tally, refresher: LayerRefresher | None = None) -> None:
        self.writer, self.plan, self.chunk_z, self.pyramid = writer, plan, chunk_z, pyramid
        self.tally, self.refresher = tally, refresher
        self.written: dict[int, set[TileKey]] = defaultdict(set)
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, name="predict-writer", daemon=True)
        self._thread.start()

    def put(self, item: tuple) -> None:
        """Queue work; re-raises the writer's error instead of waiting on a dead thread."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Finish the queued work and stop; raises the writer's error, if any."""
        if self.error is None:
            self.put(("stop",))
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while (item := self._queue.get())[0] != "stop":
                if item[0] == "tiles":
                    _, chunk, sections, probs, keys, spread = item
                    self.writer.write(chunk.core, sections, probs, keys, spread)
                    self.written[chunk.z_block].update(keys)
                    self.tally.add(written=len(keys))
                    if self.refresher is not None:
                        self.refresher.add(chunk.core.to_mip0(self.writer.mip))
                else:  # ("block", k): every chunk of z block k is done
                    k = item[1]
                    written = self.written.pop(k, set())
                    if self.pyramid:
                        keys = self.plan.tiles(k * self.chunk_z, (k + 1) * self.chunk_z)
                        self.tally.add(pyramid=self.writer.build_pyramid(keys, written))
                    if self.refresher is not None:
                        self.refresher.flush()
        except BaseException as exc:  # handed to the producer, re-raised there
            self.error = exc


def _padded_em(chunk_data: np.ndarray, core: Box, outer: Box, margin: int) -> np.ndarray:
    """Sections of a chunk with ``margin`` px of context on every side: real context where
    the volume has it, mirrored where the read was clipped at the volume border."""
    want = core.grow(0, margin, margin)
    pads = ((0, 0), (outer.y0 - want.y0, want.y1 - outer.y1),
            (outer.x0 - want.x0, want.x1 - outer.x1))
    return np.pad(chunk_data, pads, mode="reflect") if any(map(any, pads)) else chunk_data


def _tile_pixels(chunk: Chunk, key: TileKey, tile: int) -> np.ndarray:
    """The EM of one tile (one section) inside a chunk's core, cropped at the volume edge."""
    z, r, c = key
    box = Box(z, z + 1, r * tile, (r + 1) * tile, c * tile, (c + 1) * tile).intersect(chunk.core)
    return chunk.core_data()[box.relative_to(chunk.core).slices()][0]


@dataclass
class BlockPrediction:
    """One predicted block: the tiles to write (``keys``, over ``sections``) with their
    probabilities ``probs`` (len(sections), C, y, x) over the block's core, and how many
    of its tiles were blank or already done, plus the uncertainty ``spread`` when the job
    asks for it."""

    keys: list[TileKey]
    sections: list[int]
    probs: np.ndarray | None
    blank: int
    resumed: int
    spread: np.ndarray | None = None  # (len(sections), y, x) uncertainty, when asked


def predict_block(job: PredictJob, block: Block, chunk: Chunk, predictor: Predictor,
                  done: Callable[[TileKey], bool]) -> BlockPrediction:
    """Predict the non-blank, unfinished tiles of ``block`` from its ``chunk`` (the core read
    with the job's margin); the same computation whichever process runs it."""
    m = job.margin
    blank = {k for k in block.tiles if job.skip_blank and
             is_blank(_tile_pixels(chunk, k, job.tile), job.blank_entropy)}
    keys = [k for k in block.tiles if k not in blank]
    if not keys or (not job.overwrite and all(done(k) for k in keys)):
        return BlockPrediction([], [], None, len(blank), len(keys))
    sections = sorted({z for z, _, _ in keys})
    em = chunk.data[[z - chunk.outer.z0 for z in sections]]
    padded = _padded_em(em, block.core, chunk.outer, m)
    probs, spread = predictor.predict_with_uncertainty(padded) if job.uncertainty \
        else (predictor.predict(padded), None)
    _, h, w = block.core.shape
    return BlockPrediction(keys, sections, probs[:, :, m:m + h, m:m + w], len(blank), 0,
                           None if spread is None else spread[:, m:m + h, m:m + w])


def _close_all(outs: list[_WriterThread]) -> None:
    """Close every writer thread; raise the first one's error after all are closed."""
    errors = []
    for out in outs:
        try:
            out.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once all are closed
            errors.append(exc)
    if errors:
        raise errors[0]


def _predict_chunks(jobs: list[PredictJob], runs: list[Prepared], tally: Tally,
                    cancel: CancelToken | None) -> None:
    """The read -> predict -> write pipeline over every chunk of the plan. Each chunk is
    read once and predicted by every model: ``jobs[i]`` (one model each, as
    :meth:`PredictJob.per_model` makes them) writes through ``runs[i]``."""
    job, plan, volume = jobs[0], runs[0].plan, runs[0].volume
    chunk_z, m = job.chunk[0], job.margin
    planned: dict[Box, Block] = {}

    def pending() -> Iterator[Box]:
        """Chunk cores still to read (runs in the reader thread)."""
        for pc in plan.chunks(tuple(job.chunk)):
            if not job.overwrite and all(pc.done(run.writer.done) for run in runs):
                tally.add(resumed=len(pc.tiles) * len(runs))
                continue
            planned[pc.core] = pc
            yield pc.core

    blocks = iter(plan.blocks(chunk_z))
    next_block = next(blocks, None)
    outs: list[_WriterThread] = []
    try:
        for run in runs:
            outs.append(_WriterThread(run.writer, plan, chunk_z, job.pyramid, tally,
                                      run.refresher))
        chunks = read_chunks(lambda b: volume.read(b, job.mip), pending(), plan.shape,
                             (0, m, m), job.prefetch, cancel)
        for chunk in chunks:
            pc = planned.pop(chunk.core)
            tally.add(nbytes=chunk.data.nbytes)
            while next_block is not None and next_block < pc.z_block:
                for out in outs:
                    out.put(("block", next_block))
                next_block = next(blocks, None)
            for lane, run, out in zip(jobs, runs, outs, strict=True):
                done = predict_block(lane, pc, chunk, run.predictor, run.writer.done)
                tally.add(blank=done.blank, resumed=done.resumed)
                if done.keys:
                    out.put(("tiles", pc, done.sections, done.probs, done.keys, done.spread))
        while next_block is not None:
            for out in outs:
                out.put(("block", next_block))
            next_block = next(blocks, None)
    finally:
        _close_all(outs)


def load_job_predictor(job: PredictJob, model: str | Path | None = None,
                       threads: int | None = None,
                       volume: VolumeSource | None = None) -> Predictor:
    """The job's network (``model``: a local copy of ``job.checkpoint``) as the runners use
    it: one engine tile per chunk section, no engine margin (the runner reads the context),
    the job's test-time augmentation and precision (int8 calibrates on ``volume``, and
    ``adapt_bn`` adapts the batch norm to it)."""
    from membrane_py.infer.engine import load_predictor

    if job.adapt_bn and volume is None:
        raise ValueError("adapt_bn needs the volume to adapt to")
    return load_predictor(job.checkpoint if model is None else model, backend=job.backend,
                          device=job.device, tile=max(job.chunk[1:]) + 2 * job.margin,
                          margin=0, threads=threads, tta=job.tta, precision=job.precision,
                          calibration=None if volume is None else
                          lambda: calibration_em(job, volume),
                          adapt_bn=(lambda: calibration_em(job, volume, n=ADAPT_PATCHES))
                          if job.adapt_bn else None)


@dataclass
class Prepared:
    """A run's output folder, claimed and ready for tiles (see :func:`prepare_run`)."""

    volume: VolumeSource
    predictor: Predictor
    plan: TilePlan
    writer: PredictionWriter
    layers: list[int]  # VAST layers the outputs were loaded into
    refresher: LayerRefresher | None  # asks VAST to reread regions as tiles land


def prepare_run(job: PredictJob, stack: ExitStack, predictor: Predictor | None = None,
                progress: ProgressCallback | None = None) -> Prepared:
    """Open the source, load the network, plan the tiles, claim the output folder (closed
    with ``stack``), write the descriptors and load them into VAST when asked (reusing the
    layers an earlier run into this folder loaded). An ``adapt_bn`` of None is settled by the
    checkpoint (:func:`~membrane_py.infer.batchnorm.settle_adapt_bn`) before the folder's
    identity is claimed."""
    job = replace(job, adapt_bn=settle_adapt_bn(job.adapt_bn, job.checkpoint))
    volume, client = open_em(job, stack)
    if job.load_in_vast and client is None:
        raise ValueError("load_in_vast needs VAST: use a vast:// source or give the VAST "
                         "address (vast / --vast)")
    predictor = predictor or load_job_predictor(job, volume=volume)
    if job.uncertainty and not hasattr(predictor, "predict_with_uncertainty"):
        raise ValueError("the uncertainty output needs the tiled engine (load_predictor)")
    plan = plan_region(job.region, volume.shape, job.mip, job.tile, client, progress)
    outputs = make_outputs(job, predictor.class_names)
    # refuses tiles of another job
    stack.enter_context(claim_output(job, volume, predictor.model_sha256,
                                     getattr(predictor, "threshold", None)))
    voxel_size = output_voxel_size(volume, job.voxel_size, progress, TASK)
    writer = PredictionWriter(job.out, outputs, volume.shape, job.mip, job.tile,
                              voxel_size, job.pyramid, job.zarr)
    descriptors = writer.write_descriptors(plan.sections())
    layers: list[int] = []
    refresher = None
    if job.load_in_vast:
        layers, _ = load_or_reuse(client, job.out, descriptors, [o.layer_name for o in outputs])
        refresher = LayerRefresher(client, layers, volume.shape,
                                   reload=lambda nrs: reload_layers(client, nrs, descriptors))
    return Prepared(volume, predictor, plan, writer, layers, refresher)


def finish_run(prepared: Prepared, tally: Tally, start: float,
               progress: ProgressCallback | None) -> PredictResult:
    """Rewrite the descriptors over what is on disk, announce them, and sum up the run."""
    writer, plan = prepared.writer, prepared.plan
    descriptors = writer.write_descriptors(plan.sections())
    refresher = prepared.refresher
    if refresher is not None and refresher.error:
        warn(progress, f"VAST stopped refreshing the prediction layers ({refresher.error}); "
             "tiles written since may stay black in VAST until the layer is reloaded", TASK)
    for path in descriptors:
        report(progress, Event.artifact(path.resolve(), TASK, "VAST descriptor"))
    return PredictResult(
        out=writer.out.resolve(), descriptors=[p.resolve() for p in descriptors],
        zarr=[z.path.resolve() for z in writer.zarr.values()], layers=prepared.layers,
        tiles_total=plan.n_tiles, tiles_written=tally.written, tiles_blank=tally.blank,
        tiles_resumed=tally.resumed, pyramid_tiles=tally.pyramid,
        megabytes_read=tally.nbytes / 1e6, seconds=time.perf_counter() - start)


def run_prediction(job: PredictJob, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None,
                   predictor: Predictor | None = None) -> PredictResult:
    """Predict the job's region in this process and write its outputs (see the module
    docstring); jobs with a ``scheduler`` run through :mod:`membrane_py.distributed`.

    A job with several models reads each chunk once and runs every model on it, each into
    its own folder (:meth:`PredictJob.per_model`); the result sums their tiles.

    ``predictor`` reuses a loaded engine (default: :func:`load_job_predictor`). Raises
    :class:`~membrane_py.events.Cancelled` when ``cancel`` is set; what was written
    stays, and rerunning the same job continues from there.
    """
    if job.scheduler is not None:
        raise ValueError(f"this job asks for the Dask scheduler {job.scheduler!r}: run it with "
                         "membrane_py.jobs.run (or `membrane run`), not run_prediction")
    jobs = job.per_model()
    if predictor is not None and len(jobs) > 1:
        raise ValueError("predictor= reuses one loaded engine: give a single-model job")
    start = time.perf_counter()
    with ExitStack() as stack:
        runs = [prepare_run(j, stack, predictor, progress) for j in jobs]
        tally = Tally(sum(run.plan.n_tiles for run in runs), progress)
        try:
            _predict_chunks(jobs, runs, tally, cancel)
        finally:  # what was written shows in VAST, also after a cancel
            for run in runs:
                if run.refresher is not None:
                    run.refresher.flush()
    results = [finish_run(run, tally, start, progress) for run in runs]
    if len(results) == 1:
        return results[0]
    return replace(results[0], out=Path(job.out).resolve(),
                   descriptors=[p for r in results for p in r.descriptors],
                   zarr=[p for r in results for p in r.zarr],
                   layers=[n for r in results for n in r.layers], tiles_total=tally.total)
