"""The machine's matmul roofline, which the benchmarks report their arithmetic against.

One large square matmul per dtype, best of a few rounds after a warm-up (synchronised on
CUDA), so a busy moment or a first-call kernel choice does not lower the peak and lift
the shares reported against it.
"""

from __future__ import annotations

import time

import torch


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, rounds: int = 3) -> float:
    """FLOP/s of an ``n`` x ``n`` matmul in ``dtype`` on ``device``: the best of ``rounds``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = 20 if device.type == "cuda" else 2

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    run()  # warm-up
    return 2 * n**3 * reps / min(run() for _ in range(rounds))
