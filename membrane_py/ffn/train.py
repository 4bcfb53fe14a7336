"""The ``ffn-train`` job: train a flood-filling network on labelled volumes.

Each of the ``batch_size`` slots draws a training coordinate (a partition uniformly, then
one of its coordinates, see :mod:`membrane_py.ffn.prep`), cuts an image and label patch of
FOV + 2 x deltas around it, augments both alike (random swap of y and x, random reflection
of each axis), and makes the target: the object under the centre (0.95 inside, 0.05
outside; all 0.05 when the centre is background, which teaches the network not to grow from
membrane). The mask canvas starts at logit(0.05) with logit(0.95) at the centre.

Then the FOV moves, as at inference: first the centre, then the 26 shifts of +-delta in a
fixed order shuffled once per run, each taken only when the canvas there has reached the
move threshold. Every accepted move is one training example; after the optimiser step the
network's output logits are written back into the slot's canvas, so later moves see the
network's own earlier predictions (the recurrence). The loss is voxelwise sigmoid
cross-entropy; every gradient entry is clipped to +-``clip``.

Checkpoints (:mod:`membrane_py.ffn.checkpoint`) are written every ``checkpoint_every``
steps and at the end, with the optimiser state, so ``resume`` continues a run.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from membrane_py.edit.instances import decode_ids
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.ffn.canvas import logit
from membrane_py.ffn.checkpoint import FFNCheckpoint, load_ffn, save_ffn
from membrane_py.geometry import Box
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.models.ffn import FFN, FFNConfig
from membrane_py.vastapi.address import parse_vast_address
from membrane_py.volumes.open import open_source

OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "rmsprop")


@dataclass
class FFNTrainJob(JobSpec):
    """Train (or resume) an FFN on ``image`` + ``labels`` at the coordinates of an
    ``ffn-prep`` file (whose box both volumes are read over); the checkpoint is ``output``."""

    kind: ClassVar[str] = "ffn-train"
    resumes: ClassVar[bool] = True

    image: str
    labels: str
    coordinates: str
    output: str
    image_layer: int = 0
    labels_layer: int | None = None
    model: FFNConfig = field(default_factory=FFNConfig)
    image_mean: float | None = None  # None = measured on the image
    image_stddev: float | None = None
    steps: int = 10000
    batch_size: int = 4
    optimizer: str = "sgd"
    learning_rate: float = 0.001
    momentum: float = 0.9
    clip: float = 0.7
    seed_pad: float = 0.05
    move_threshold: float = 0.9
    permute_yx: bool = True
    reflect: bool = True
    checkpoint_every: int = 1000
    resume: bool = True
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
        if self.learning_rate <= 0 or self.clip <= 0:
            raise ValueError("learning_rate and clip must be > 0")
        if not 0 < self.seed_pad < 0.5 or not 0.5 < self.move_threshold < 1:
            raise ValueError("seed_pad must lie in (0, 0.5) and move_threshold in (0.5, 1)")


@dataclass
class FFNTrainResult(Result):
    path: Path
    steps: int
    examples: int
    final_loss: float
    seconds: float

    def summary(self) -> str:
        return (f"{self.steps} steps ({self.examples} FOV examples), loss {self.final_loss:.4f}"
                f" in {self.seconds:.0f} s -> {self.path}")


def make_optimizer(name: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (Adam betas 0.9 / 0.999, epsilon 1e-8, as the reference)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr, betas=(0.9, 0.999), eps=1e-8)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr)
    return torch.optim.RMSprop(params, lr, momentum=momentum)


class Slot:
    """One batch slot: a patch, its target, its canvas and the moves still to try."""

    def __init__(self, image: np.ndarray, target: np.ndarray, canvas: np.ndarray) -> None:
        self.image, self.target, self.canvas = image, target, canvas
        self.move = 0


class ExampleSource:
    """Patches around balanced coordinates, augmented, with their FOV moves."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, coords: np.ndarray,
                 partition: np.ndarray, config: FFNConfig, job: FFNTrainJob,
                 rng: np.random.Generator) -> None:
        self.image, self.labels, self.config, self.job, self.rng = (image, labels, config,
                                                                    job, rng)
        self.half = np.array(config.radius) + np.array(config.deltas)
        inside = np.all((coords >= self.half) & (coords < np.array(labels.shape) - self.half),
                        axis=1)
        if not inside.any():
            raise ValueError(f"no training coordinate is far enough ({list(self.half)} "
                             "voxels, z, y, x) from the volume border for a patch: prepare "
                             "with a margin of at least fov//2 + deltas")
        coords, partition = coords[inside], partition[inside]
        self.groups = [coords[partition == p] for p in np.unique(partition)]
        shifts = [s for s in itertools.product((-1, 0, 1), repeat=3) if any(s)]
        order = rng.permutation(len(shifts))  # shuffled once per run, as the reference
        self.moves = [(0, 0, 0)] + [tuple(int(v) * d for v, d in
                                          zip(shifts[i], config.deltas, strict=True))
                                    for i in order]
        self.pad, self.centre_logit = logit(job.seed_pad), logit(1 - job.seed_pad)
        self.threshold = logit(job.move_threshold)

    def new_slot(self) -> Slot:
        group = self.groups[self.rng.integers(len(self.groups))]
        z, y, x = group[self.rng.integers(len(group))]
        sel = tuple(slice(c - h, c + h + 1) for c, h in zip((z, y, x), self.half, strict=True))
        image, labels = self.image[sel], self.labels[sel]
        if self.job.permute_yx and self.config.fov[1] == self.config.fov[2] and \
                self.config.deltas[1] == self.config.deltas[2] and self.rng.random() < 0.5:
            image, labels = image.transpose(0, 2, 1), labels.transpose(0, 2, 1)
        if self.job.reflect:
            for axis in range(3):
                if self.rng.random() < 0.5:
                    image, labels = np.flip(image, axis), np.flip(labels, axis)
        c = tuple(self.half)
        centre = labels[c]
        obj = (labels == centre) & (centre > 0)
        target = np.where(obj, 1 - self.job.seed_pad, self.job.seed_pad).astype(np.float32)
        canvas = np.full(labels.shape, self.pad, np.float32)
        canvas[c] = self.centre_logit
        return Slot(np.ascontiguousarray(image, np.float32), target, canvas)

    def fov(self, move: tuple[int, int, int]) -> tuple[slice, ...]:
        return tuple(slice(h + m - r, h + m + r + 1) for h, m, r in
                     zip(self.half, move, self.config.radius, strict=True))

    def next_move(self, slot: Slot) -> tuple[int, int, int] | None:
        """The slot's next accepted move (canvas at its centre >= the threshold)."""
        while slot.move < len(self.moves):
            move = self.moves[slot.move]
            slot.move += 1
            if slot.canvas[tuple(h + m for h, m in zip(self.half, move, strict=True))] \
                    >= self.threshold:
                return move
        return None


def _read(spec: str, layer: int | None, box: Box, labels: bool) -> np.ndarray:
    with open_source(spec, layer if parse_vast_address(spec) else None, labels=labels) as src:
        full = Box.full(src.shape)
        if box.intersect(full) != box:
            raise ValueError(f"{spec} (shape {list(src.shape)}, z, y, x) does not cover the "
                             f"coordinates' box {list(box.to_vast())}: prepare on this volume")
        return src.read(box)


def run_ffn_train(job: FFNTrainJob, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> FFNTrainResult:
    """Train for ``job.steps`` optimiser steps in total (a resumed run continues)."""
    from membrane_py.train.device import pick_device

    t0 = time.perf_counter()
    coords_path = Path(job.coordinates)
    if not coords_path.is_file():
        raise FileNotFoundError(f"coordinates {coords_path} not found: run `membrane ffn "
                                "prep` first")
    with np.load(coords_path, allow_pickle=False) as d:
        if not {"coords", "partition", "box_zyx"} <= set(d.files):
            raise ValueError(f"{coords_path} is not an ffn-prep coordinates file")
        coords, partition, b = d["coords"], d["partition"], d["box_zyx"]
    box = Box(*(int(v) for v in b))
    raw = _read(job.image, job.image_layer, box, labels=False)
    labels = decode_ids(_read(job.labels, job.labels_layer, box, labels=True))
    if raw.ndim != 3:
        raise ValueError(f"{job.image} is not a grayscale volume")
    out = Path(job.output)
    ckpt = load_ffn(out, job.model) if job.resume and out.is_file() else None
    mean = ckpt.image_mean if ckpt else (job.image_mean if job.image_mean is not None
                                         else float(raw.mean()))
    std = ckpt.image_stddev if ckpt else (job.image_stddev if job.image_stddev is not None
                                          else float(raw.std()) or 1.0)
    image = (raw.astype(np.float32) - np.float32(mean)) / np.float32(std)
    rng = np.random.default_rng(job.seed + (ckpt.step if ckpt else 0))
    torch.manual_seed(job.seed + (ckpt.step if ckpt else 0))
    device = pick_device(job.device)
    model = FFN(job.model)
    if ckpt:
        model.load_state_dict(ckpt.state_dict)
    model.to(device).train()
    opt = make_optimizer(job.optimizer, model.parameters(), job.learning_rate, job.momentum)
    if ckpt and ckpt.optimizer:
        opt.load_state_dict(ckpt.optimizer)
    step, history = (ckpt.step, list(ckpt.history)) if ckpt else (0, [])
    source = ExampleSource(image, labels, coords, partition, job.model, job, rng)
    slots = [source.new_slot() for _ in range(job.batch_size)]
    examples, loss_value = 0, float("nan")

    def save() -> None:
        save_ffn(out, FFNCheckpoint(
            {k: v.detach().cpu() for k, v in model.state_dict().items()},
            job.model.to_dict(), mean, std, history=history,
            train_config=job.to_dict(), lineage=ckpt.lineage if ckpt else {}, step=step,
            optimizer=opt.state_dict()))

    while step < job.steps:
        check_cancel(cancel)
        batch = []
        for i in range(len(slots)):
            move = source.next_move(slots[i])
            while move is None:
                slots[i] = source.new_slot()
                move = source.next_move(slots[i])
            batch.append((slots[i], source.fov(move)))
        img = torch.from_numpy(np.stack([s.image[f] for s, f in batch]))[:, None].to(device)
        seed = torch.from_numpy(np.stack([s.canvas[f] for s, f in batch]))[:, None].to(device)
        target = torch.from_numpy(np.stack([s.target[f] for s, f in batch]))[:, None]
        logits = model(img, seed)
        loss = F.binary_cross_entropy_with_logits(logits, target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), job.clip)
        opt.step()
        out_np = logits.detach().float().cpu().numpy()[:, 0]
        for (slot, f), pred in zip(batch, out_np, strict=True):
            slot.canvas[f] = pred  # the recurrence: later moves see this prediction
        step += 1
        examples += len(batch)
        loss_value = float(loss.detach())
        if step % max(1, job.steps // 10000) == 0:  # at most ~10k entries in the checkpoint
            history.append({"step": step, "loss": loss_value})
        report(progress, Event.metric("ffn-train", step, job.steps, loss=loss_value))
        report(progress, Event.progress("ffn-train", step, job.steps,
                                        f"loss {loss_value:.4f}"))
        if step % job.checkpoint_every == 0:
            save()
    save()
    report(progress, Event.artifact(out, "ffn-train", "FFN checkpoint"))
    return FFNTrainResult(out, step, examples, loss_value, time.perf_counter() - t0)
