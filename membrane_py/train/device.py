"""Device choice, mixed precision, memory format and seeding for training and prediction."""

from __future__ import annotations

import contextlib
import platform
import random
from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; any torch device string is accepted."""
    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use 'auto'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (``/proc/cpuinfo``); empty elsewhere."""
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return set()
    for line in info.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 arithmetic (AVX-512 BF16 or AMX); without it oneDNN
    emulates bf16 and runs slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA or the CPU when enabled (the caller decides whether the CPU
    has bf16, see :mod:`membrane_py.train.execution`); a no-op elsewhere."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device, channels_last: bool = True) -> torch.memory_format:
    """channels-last when asked for on CUDA or the CPU (oneDNN and cuDNN convolutions prefer
    it), contiguous elsewhere."""
    if channels_last and device.type in ("cuda", "cpu"):
        return torch.channels_last
    return torch.contiguous_format


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python and torch (datasets own NumPy generators); return a generator for data order."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def device_description(device: torch.device) -> str:
    """Human-readable name, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
