"""Training throughput: U-Net patches per second on the current device (one JSON object).

    python bench/train.py [--patch 256 --batch 8 --depth 5 --base-filters 32 --iters 20]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.train.device import (
    autocast,
    device_description,
    memory_format,
    pick_device,
    seed_everything,
)
from membrane_py.train.losses import cross_entropy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--base-filters", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    args = ap.parse_args()

    seed_everything(0)
    dev = pick_device(args.device)
    amp = not args.no_amp
    fmt = memory_format(dev)
    cfg = UNetConfig(depth=args.depth, base_filters=args.base_filters)
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
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "bench": "train", "device": device_description(dev), "amp_bf16": amp and dev.type == "cuda",
        "channels_last": fmt == torch.channels_last, "patch": args.patch, "batch": args.batch,
        "model": cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
        "iterations": args.iters, "seconds": round(seconds, 3),
        "patches_per_second": round(args.iters * args.batch / seconds, 2),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if dev.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
