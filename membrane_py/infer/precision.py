"""Arithmetic precision of inference: ``fp32``, ``bf16``, ``int8`` and the ``auto`` rule.

- ``fp32``: float32 everywhere (either backend).
- ``bf16``: PyTorch autocast to bfloat16 (convolutions in bf16, softmax in float32); on
  CUDA as the engine always did, on the CPU through oneDNN, which needs the AVX-512 BF16 or
  AMX instructions to be fast. Runs on the PyTorch backend only.
- ``int8``: ONNX Runtime with the exported model statically quantised to 8-bit integers
  (:mod:`membrane_py.infer.quantize`). Runs on the ONNX Runtime backend only.

``auto`` is a recorded rule, not a measurement at run time (:func:`resolve_precision`):

- CUDA: bf16 (as the engine always did);
- CPU with AVX-512 BF16 or AMX and a network of at least :data:`BF16_MIN_FILTERS` base
  filters (the default U-Net): bf16. On this project's 2-core AMD EPYC (AVX-512 BF16 and VNNI,
  shared with other jobs) PyTorch bf16 ran the default U-Net (32 filters) 1.6x (bench/predict.py)
  and 1.7x (a second, ad hoc run) faster than the ONNX Runtime fp32 engine; for the light
  one (16 filters) the runs disagreed (0.7x to 1.4x), so narrower networks stay on fp32;
- otherwise fp32 (ONNX Runtime on the CPU).

On ISBI 2012 sections 15-19 (bench/predict.py, docs/prediction.md) bf16 moved
probabilities by at most 0.01 and V_rand by 0.002. int8 was 2.0-2.6x faster there but moved
V_rand by 0.01, more than the 0.005 this rule tolerates, so ``auto`` never picks it: it is
used only when asked for.
"""

from __future__ import annotations

from membrane_py.train.device import cpu_has_bf16

PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: ``auto`` uses bf16 on a bf16-capable CPU from this many base filters on (see above)
BF16_MIN_FILTERS = 32


def resolve_precision(precision: str, device_type: str, base_filters: int | None = None) -> str:
    """``fp32``, ``bf16`` or ``int8`` for a requested precision on a device type, for a
    network with ``base_filters`` (None: unknown, e.g. an ONNX model). ``auto``: see the
    module docstring."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16"
    wide = base_filters is not None and base_filters >= BF16_MIN_FILTERS
    return "bf16" if device_type == "cpu" and wide and cpu_has_bf16() else "fp32"
