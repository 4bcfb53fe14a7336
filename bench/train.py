"""Training throughput: U-Net patches per second on the current device (one JSON object).

    python bench/train.py [--patch 256 --batch 8 --sizes 4x16,5x32 --seconds 5]

Each size (depth x base filters) trains for about ``--seconds`` after a warm-up; the default
sizes are the CPU and CUDA defaults of ``membrane train`` (train/config.py DEFAULT_ARCH).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.train.config import DEFAULT_ARCH
from membrane_py.train.device import (
    autocast,
    device_description,
    memory_format,
    pick_device,
    seed_everything,
)
from membrane_py.train.losses import cross_entropy


def measure(depth: int, filters: int, args, dev: torch.device, amp: bool) -> dict:
    """Patches per second of one U-Net size, timed over about ``args.seconds``."""
    seed_everything(0)
    fmt = memory_format(dev)
    cfg = UNetConfig(depth=depth, base_filters=filters)
    model = UNet(cfg).to(dev, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 1, args.patch, args.patch, device=dev).to(memory_format=fmt)
    y = torch.randint(0, 3, (args.batch, args.patch, args.patch), device=dev)

    def step() -> None:
        with autocast(dev, amp):
            logits = model(x)
        loss = cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    t0, iters = time.perf_counter(), 0
    while iters < 2 or time.perf_counter() - t0 < args.seconds:
        step()
        iters += 1
        sync()
    seconds = time.perf_counter() - t0
    return {"model": cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "iterations": iters, "seconds": round(seconds, 3),
            "patches_per_second": round(iters * args.batch / seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", default="4x16,5x32", help="depth x base filters, comma-separated")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed training per size")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    args = ap.parse_args()

    dev = pick_device(args.device)
    amp = not args.no_amp
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    results = [measure(d, f, args, dev, amp) for d, f in sizes]
    print(json.dumps({
        "bench": "train", "device": device_description(dev), "amp_bf16": amp and dev.type == "cuda",
        "channels_last": memory_format(dev) == torch.channels_last, "patch": args.patch,
        "batch": args.batch, "default_size": list(DEFAULT_ARCH.get(dev.type, DEFAULT_ARCH["cpu"])),
        "results": results,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if dev.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
