"""Training throughput before and after the speed toggles, side by side (one JSON object).

    python bench/train.py [--sizes 4x16,5x32 --patch 256 --batch 4 --rounds 3 --steps 2
                           --compile --accuracy-steps 40]

For each U-Net size (depth x base filters; the defaults are the CPU and CUDA defaults of
``membrane train``, train/config.py DEFAULT_ARCH) this builds one training set-up per
configuration: ``before`` (every toggle off: fp32, contiguous memory, data loaded on the
main thread, eager, PyTorch's threads, as training ran before the toggles), ``after`` (the
defaults ``membrane train`` settles on for this device, train/execution.py) and each toggle
alone. Every set-up trains on the same real data path as ``membrane train``: saturated,
rotated, augmented 256^2 patches of ISBI 2012 sections 00-14 (``--data``; a synthetic
volume when absent), weighted cross-entropy, Adam. Rounds interleave the set-ups (each
trains ``--steps`` batches per round) and the best round counts, so load from other
processes hits all of them alike. ``--compile`` adds ``torch.compile`` alone and reports
its compile time.

``--accuracy-steps N`` (0 to skip) then trains the CPU default network twice for N batches
from the same seed, fp32 and bf16 (other toggles at their defaults), and reports the
validation loss and V_rand on ISBI sections 15-19.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from membrane_py.augment.dataset import OnTheFlyPatchDataset
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.train.config import DEFAULT_ARCH, TrainJob
from membrane_py.train.device import (
    autocast,
    cpu_flags,
    device_description,
    memory_format,
    pick_device,
    seed_everything,
)
from membrane_py.train.execution import Execution, prefetched, resolve_execution
from membrane_py.train.losses import make_loss
from membrane_py.train.trainer import read_pairs, train_model

ISBI = Path("/work/shared/data/isbi2012")


def load_sections(data: Path) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(EM images, class maps, source) of the training data: ISBI when present."""
    if (data / "images").is_dir():
        _, images, labels, _, _ = read_pairs(data / "images", data / "labels")
        return images, labels, str(data)
    from membrane_py.volumes.synthetic import make_synthetic

    syn = make_synthetic((20, 512, 512), seed=0)
    return list(syn.em), list(syn.membranes), "synthetic (20, 512, 512)"


def configurations(dev: torch.device, with_compile: bool) -> dict[str, Execution]:
    """before, after (the defaults) and each toggle alone."""
    threads = torch.get_num_threads()
    before = Execution(amp=False, channels_last=False, prefetch=False, compile=False,
                       threads=threads)
    after, _ = resolve_execution(TrainJob(), dev)
    alone = {
        "amp": dataclasses.replace(before, amp=True),
        "channels_last": dataclasses.replace(before, channels_last=True),
        "prefetch": dataclasses.replace(before, prefetch=True),
        "threads_1": dataclasses.replace(before, threads=1),
    }
    if with_compile:
        alone["compile"] = dataclasses.replace(before, compile=True)
    return {"before": before, "after": after, **alone}


class Setup:
    """One network, optimizer and data stream trained with one :class:`Execution`."""

    def __init__(self, run: Execution, size: tuple[int, int], data, args, dev) -> None:
        seed_everything(0)
        self.run, self.dev = run, dev
        self.fmt = memory_format(dev, run.channels_last)
        self.model = UNet(UNetConfig(depth=size[0], base_filters=size[1]))
        self.model.to(dev, memory_format=self.fmt).train()
        self.forward = torch.compile(self.model) if run.compile else self.model
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = make_loss("weighted_ce", [0.3, 0.7])
        images, labels = data
        job = TrainJob()
        ds = OnTheFlyPatchDataset(images, labels, args.patch, 10**6, job.preprocess_config,
                                  job.augment, seed=0)
        batches = iter(DataLoader(ds, batch_size=args.batch, shuffle=False))
        self.batches = prefetched(batches) if run.prefetch else batches
        torch.set_num_threads(run.threads)
        t0 = time.perf_counter()
        self.step()  # warm-up (compilation, oneDNN primitive caches)
        self.warmup_seconds = time.perf_counter() - t0

    def step(self) -> None:
        x, y = next(self.batches)
        x = x.to(self.dev, memory_format=self.fmt)
        y = y.to(self.dev)
        with autocast(self.dev, self.run.amp):
            logits = self.forward(x)
        loss = self.loss(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, steps: int) -> float:
        """Seconds for ``steps`` training steps at this set-up's thread count."""
        torch.set_num_threads(self.run.threads)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - t0


def measure_size(size, data, args, dev) -> dict:
    """Interleaved rounds over every configuration of one network size; best round each."""
    setups = {name: Setup(run, size, data, args, dev)
              for name, run in configurations(dev, args.compile).items()}
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(args.rounds):
        for name, setup in setups.items():
            best[name] = min(best[name], setup.timed(args.steps))
    rate = {name: args.steps * args.batch / s for name, s in best.items()}
    out = {name: {"patches_per_second": round(rate[name], 3),
                  "vs_before": round(rate[name] / rate["before"], 3),
                  "warmup_seconds": round(setups[name].warmup_seconds, 1),
                  "execution": dataclasses.asdict(setups[name].run)}
           for name in setups}
    return {"size": list(size), "parameters": sum(p.numel() for p in
                                                  setups["before"].model.parameters()),
            "configurations": out}


def accuracy(images, labels, source: str, args, dev) -> dict:
    """fp32 vs bf16 training for the same number of batches; validation on sections 15-19."""
    train_ds = OnTheFlyPatchDataset(images[:15], labels[:15], args.patch,
                                    args.accuracy_steps * args.batch, TrainJob().preprocess_config,
                                    TrainJob().augment, seed=0)
    val_ds = OnTheFlyPatchDataset(images[15:20], labels[15:20], args.patch, args.val_patches,
                                  TrainJob().preprocess_config, None, seed=1, rotate=False)
    out = {"data": source, "train_sections": "00-14", "val_sections": "15-19",
           "steps": args.accuracy_steps, "batch": args.batch, "val_patches": args.val_patches}
    depth, filters = DEFAULT_ARCH["cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        for amp in (False, True):
            job = TrainJob(out_dir=tmp, name=f"amp{int(amp)}", depth=depth,
                           base_filters=filters, patch_size=args.patch, batch_size=args.batch,
                           epochs=1, log_every=10**6, amp=amp, best_metric="val_v_rand",
                           device=str(dev))
            t0 = time.perf_counter()
            res = train_model(train_ds, val_ds, job)
            last = res.history[-1]
            out["bf16" if amp else "fp32"] = {
                "train_loss": round(last["train_loss"], 5),
                "val_loss": round(last["val_loss"], 5),
                "val_v_rand": round(last["val_v_rand"], 5),
                "seconds": round(time.perf_counter() - t0, 1)}
    out["val_loss_change"] = round(out["bf16"]["val_loss"] - out["fp32"]["val_loss"], 5)
    out["val_v_rand_change"] = round(out["bf16"]["val_v_rand"] - out["fp32"]["val_v_rand"], 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(f"{d}x{f}" for d, f in
                                                (DEFAULT_ARCH["cpu"], DEFAULT_ARCH["cuda"])),
                    help="depth x base filters, comma-separated")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="training batches per round")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile alone")
    ap.add_argument("--accuracy-steps", type=int, default=40, help="0: skip the bf16 check")
    ap.add_argument("--val-patches", type=int, default=32)
    ap.add_argument("--data", type=Path, default=ISBI)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, help="also write the JSON here after every stage")
    args = ap.parse_args()

    dev = pick_device(args.device)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    images, labels, source = load_sections(args.data)
    data = (images[:15], labels[:15])
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")] \
        if args.sizes else []
    doc = {
        "bench": "train", "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device_description(dev), "torch": torch.__version__,
        "cpu_bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}),
        "cores": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
        "data": source, "patch": args.patch, "batch": args.batch, "rounds": args.rounds,
        "steps_per_round": args.steps,
        "defaults": dataclasses.asdict(resolve_execution(TrainJob(), dev)[0]),
        "results": [], "accuracy_bf16_vs_fp32": None}

    def emit(final: bool = False) -> None:
        doc.update(load_average_after=[round(v, 2) for v in os.getloadavg()],
                   seconds=round(time.perf_counter() - t0, 1),
                   peak_gpu_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2)
                   if dev.type == "cuda" else None)
        text = json.dumps(doc, indent=1)
        if args.out:
            args.out.write_text(text + "\n")
        if final:
            print(text)

    threads = torch.get_num_threads()
    for size in sizes:
        doc["results"].append(measure_size(size, data, args, dev))
        torch.set_num_threads(threads)  # set-ups change it; the next size starts alike
        emit()
    if args.accuracy_steps:
        doc["accuracy_bf16_vs_fp32"] = accuracy(images, labels, source, args, dev)
    emit(final=True)


if __name__ == "__main__":
    main()
