"""ONNX export of checkpoints (``membrane export-onnx``): write the model atomically, check it
with ``onnx.checker`` and compare ONNX Runtime's logits with PyTorch's. The conversion and
the runtime backend live in :mod:`membrane_py.infer.onnx_backend`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import torch

from membrane_py.atomic import atomic_path
from membrane_py.augment.preprocess import preprocess
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.infer.onnx_backend import model_bytes, onnx_model
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint


@dataclass
class ExportOnnxJob(JobSpec):
    """Export ``checkpoint`` to the ONNX model ``out``; with ``check``, compare ONNX Runtime
    with PyTorch on random and synthetic input and on ``sample`` (an 8-bit EM image)."""

    kind: ClassVar[str] = "export-onnx"
    checkpoint: str
    out: str
    opset: int = 17
    check: bool = True
    sample: str | None = None


@dataclass
class ExportReport(Result):
    """Where the model went and how far ONNX Runtime's logits are from PyTorch's, per input
    (empty when the check was skipped)."""

    path: Path
    opset: int
    max_abs_diff: dict[str, float]

    def summary(self) -> str:
        lines = [f"wrote {self.path} (opset {self.opset})"]
        lines += [f"max abs difference of logits vs PyTorch, {name} input: {diff:.3g}"
                  for name, diff in self.max_abs_diff.items()]
        return "\n".join(lines)


def export_onnx(checkpoint: str | Path | Checkpoint, path: str | Path, opset: int = 17,
                check: bool = True, sample: np.ndarray | None = None) -> ExportReport:
    """Write ``checkpoint`` as an ONNX model (atomically). With ``check``: run
    ``onnx.checker`` and compare ONNX Runtime with PyTorch on a random image, a synthetic EM
    section and ``sample`` (a real 2D uint8 EM image), if given."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = onnx_model(ck, opset)
    if check:
        onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    diffs = compare_with_torch(ck, path, check_images(sample)) if check else {}
    return ExportReport(path, opset, diffs)


def check_images(sample: np.ndarray | None = None, side: int = 256) -> dict[str, np.ndarray]:
    """Inputs for :func:`compare_with_torch`: uniform noise, synthetic EM, and ``sample``."""
    from membrane_py.volumes.synthetic import make_synthetic

    images = {"random": np.random.default_rng(0).integers(0, 256, (side, side), np.uint8),
              "synthetic": make_synthetic((1, side, side), seed=0).em[0]}
    if sample is not None:
        images["sample"] = sample
    return images


def compare_with_torch(ck: Checkpoint, model: str | Path | bytes,
                       images: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |logits(ONNX Runtime, CPU) - logits(PyTorch, CPU, float32)| per 2D uint8 image,
    each preprocessed as the checkpoint says and reflect-padded to a multiple of 2**depth."""
    import onnxruntime as ort

    net = ck.build_model()
    session = ort.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
    m = ck.model_config.multiple
    diffs = {}
    for name, image in images.items():
        x = preprocess(image, ck.preprocess_config)
        x = np.pad(x, ((0, -x.shape[0] % m), (0, -x.shape[1] % m)), mode="reflect")[None, None]
        with torch.inference_mode():
            ref = net(torch.from_numpy(x)).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        diffs[name] = float(np.abs(got - ref).max())
    return diffs




def run_export_onnx(job: ExportOnnxJob, progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> ExportReport:
    """The export-onnx job (see :func:`export_onnx`)."""
    image = None
    if job.sample is not None:
        from membrane_py.volumes.stacks import read_image

        image = read_image(job.sample)
        if image.dtype.name != "uint8" or image.ndim != 2:
            raise ValueError(f"sample {job.sample} is {image.dtype} {image.shape}, not 8-bit "
                             "grayscale")
    check_cancel(cancel)
    result = export_onnx(job.checkpoint, job.out, opset=job.opset, check=job.check,
                         sample=image)
    report(progress, Event.artifact(result.path, "export-onnx", "ONNX model"))
    return result
