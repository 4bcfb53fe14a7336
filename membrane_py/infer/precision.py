"""Arithmetic precision of inference: ``fp32``, ``bf16``, ``int8`` and the ``auto`` rule.

- ``fp32``: float32 everywhere (either backend).
- ``bf16``: PyTorch autocast to bfloat16 (convolutions in bf16, softmax in float32); on
  CUDA as the engine always did, on the CPU through oneDNN, which needs the AVX-512 BF16 or
  AMX instructions to be fast. Runs on the PyTorch backend only.
- ``int8``: ONNX Runtime with the exported model statically quantised to 8-bit integers
  (:mod:`membrane_py.infer.quantize`). Runs on the ONNX Runtime backend only.

``auto`` is a recorded rule, not a measurement at run time (:func:`resolve_precision`):
bf16 on CUDA (as before); on the CPU fp32, the ONNX Runtime engine. bench/predict.py on
this project's benchmark CPU (Xeon with AVX-512 BF16 and VNNI, 2 cores, see
docs/prediction.md) measured PyTorch bf16 autocast *slower* than the ONNX Runtime fp32
engine, so bf16 never wins on the CPU by default. int8 was the fastest there but moves
V_rand by more than the 0.005 the rule tolerates on some models, so it is used only when
asked for.
"""

from __future__ import annotations

import platform
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "int8")


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
    """True when the CPU has bf16 arithmetic (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device_type: str) -> str:
    """``fp32``, ``bf16`` or ``int8`` for a requested precision on a device type (``auto``:
    see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" else "fp32"
