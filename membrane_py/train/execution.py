"""How a training run executes: bf16 autocast, memory format, data prefetching,
``torch.compile`` and the number of threads.

Each is a :class:`~membrane_py.train.config.TrainJob` field; ``"auto"`` ones are settled here
per device (:func:`resolve_execution`) by rules measured with ``bench/train.py`` (see
docs/training.md, "Training speed"):

- ``amp``: bf16 autocast. ``auto`` uses it on CUDA and on CPUs with AVX-512 BF16 or AMX (on
  this project's 2-core AMD EPYC it trained the CPU default U-Net 1.9-2.2x as fast, the
  validation loss and V_rand unchanged within noise); asked for (True) on a CPU without
  them it falls back to fp32 with a warning, since oneDNN would emulate bf16 more slowly.
- ``channels_last``: channels-last activations and weights (``auto``: CUDA and the CPU,
  where it measured 1.03-1.5x and never slower).
- ``prefetch``: a background thread loads and augments the next batches while the network
  trains; off by default: loading a patch takes milliseconds against a training step of
  seconds on a CPU, and on the loaded 2-core test machine the extra thread measured 1.07x
  in one run and 0.79x in another.
- ``compile``: ``torch.compile`` of the training forward pass; off by default because the
  compilation (minutes on a loaded 2-core CPU) costs more than it saves in short runs.
- ``threads``: intra-op threads for the run (None: PyTorch's default, one per core).

The resolved values are what the checkpoint's ``train_config`` and the log record.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch

from membrane_py.train.config import AUTO, TrainJob
from membrane_py.train.device import cpu_has_bf16


@dataclass(frozen=True)
class Execution:
    """The settled execution toggles of one training run."""

    amp: bool
    channels_last: bool
    prefetch: bool
    compile: bool
    threads: int

    def describe(self) -> str:
        """One line for the log, e.g. 'bf16 autocast, channels-last, prefetch thread, ...'."""
        return ", ".join([
            "bf16 autocast" if self.amp else "fp32",
            "channels-last" if self.channels_last else "contiguous memory",
            "prefetch thread" if self.prefetch else "no prefetch thread",
            "torch.compile" if self.compile else "eager",
            f"{self.threads} threads"])


def resolve_execution(job: TrainJob, device: torch.device, cpu_bf16: bool | None = None,
                      ) -> tuple[Execution, list[str]]:
    """The :class:`Execution` a job's toggles mean on ``device`` and the warnings to show.
    ``cpu_bf16`` (None: this machine's, :func:`~membrane_py.train.device.cpu_has_bf16`)
    says whether the CPU computes bf16 natively."""
    warnings = []
    kind = device.type
    native = kind == "cuda" or (
        kind == "cpu" and (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16))
    amp = native if job.amp == AUTO else bool(job.amp) and native
    if job.amp is True and not native:
        warnings.append(f"bf16 autocast needs CUDA or a CPU with AVX-512 BF16 or AMX; this "
                        f"{kind} device trains in fp32 (pass --no-amp to silence this)")
    channels_last = (kind in ("cuda", "cpu") if job.channels_last == AUTO
                     else bool(job.channels_last))
    return Execution(amp, channels_last, job.prefetch, job.compile,
                     job.threads or torch.get_num_threads()), warnings


def settled(job: TrainJob, run: Execution) -> TrainJob:
    """``job`` with its execution fields replaced by the values ``run`` settled on (what
    the checkpoint records)."""
    return replace(job, amp=run.amp, channels_last=run.channels_last, prefetch=run.prefetch,
                   compile=run.compile, threads=run.threads)


def prefetched(batches: Iterable, depth: int = 2) -> Iterator:
    """The items of ``batches``, produced by a background thread up to ``depth`` ahead.

    Data loading (NumPy, OpenCV) releases the GIL, so it overlaps the training step; an
    exception in the thread is raised here; closing the iterator (a ``break``) stops it.
    """
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((end, e))

    thread = threading.Thread(target=produce, name="train-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
