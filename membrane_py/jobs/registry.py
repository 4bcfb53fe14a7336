"""The registry of job kinds: ``kind -> (spec class, run function)``.

Every workflow step registers here once; the CLI's ``membrane run FILE.json``, the worker
and Dask find the step by the spec's ``kind``. Entries are import paths so that looking up
one kind never imports another kind's heavy dependencies (PyTorch, Qt, ...).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from membrane_py.events import CancelToken, ProgressCallback
from membrane_py.jobs.spec import JobSpec, Result, SpecError

#: kind -> (module, spec class, run function)
KINDS: dict[str, tuple[str, str, str]] = {
    "gt": ("membrane_py.augment.groundtruth", "GtJob", "run_gt"),
    "patches": ("membrane_py.augment.patches", "PatchJob", "run_patches"),
    "train": ("membrane_py.train.trainer", "TrainJob", "run_training"),
    "evaluate": ("membrane_py.predict.evaluate", "EvaluateJob", "run_evaluation"),
    "predict": ("membrane_py.distributed.predict", "PredictJob", "run_predict"),
    "follow": ("membrane_py.predict.follow", "FollowJob", "run_follow"),
    "instances": ("membrane_py.edit.instances", "InstanceJob", "run_instances"),
    "paint": ("membrane_py.edit.paint", "PaintJob", "run_paint"),
    "fill": ("membrane_py.edit.fill", "FillJob", "run_fill"),
    "suggest": ("membrane_py.predict.suggest", "SuggestJob", "run_suggest"),
    "export-onnx": ("membrane_py.transfer.onnx", "ExportOnnxJob", "run_export_onnx"),
    "ffn-prep": ("membrane_py.ffn.prep", "FFNPrepJob", "run_ffn_prep"),
    "ffn-train": ("membrane_py.ffn.train", "FFNTrainJob", "run_ffn_train"),
    "ffn-infer": ("membrane_py.ffn.infer", "FFNInferJob", "run_ffn_infer"),
}

RunFunction = Callable[..., Result]


def lookup(kind: str) -> tuple[type[JobSpec], RunFunction]:
    """The spec class and run function of ``kind``."""
    if kind not in KINDS:
        raise SpecError(f"unknown job kind {kind!r}; known kinds: {', '.join(KINDS)}")
    module, spec_name, run_name = KINDS[kind]
    mod = importlib.import_module(module)
    return getattr(mod, spec_name), getattr(mod, run_name)


def spec_from_dict(d: dict[str, Any]) -> JobSpec:
    """A spec of any kind from parsed JSON (its ``kind`` key picks the class)."""
    if not isinstance(d, dict) or "kind" not in d:
        raise SpecError(f"a job is a JSON object with a 'kind' key (one of {', '.join(KINDS)})")
    spec_cls, _ = lookup(d["kind"])
    return spec_cls.from_dict(d)


def read_job_file(path: str | Path) -> Any:
    """The parsed JSON of a job file, unchecked (the worker checks what it is sent)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path} is not a JSON job file: {e}") from None


def load_job(path: str | Path) -> JobSpec:
    """Read a job file written by ``--save-job`` (or by hand)."""
    return spec_from_dict(read_job_file(path))


def run(spec: JobSpec, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None) -> Result:
    """Run any registered job: the one entry the CLI, GUI, worker and Dask share."""
    _, run_fn = lookup(spec.kind)
    return run_fn(spec, progress=progress, cancel=cancel)
