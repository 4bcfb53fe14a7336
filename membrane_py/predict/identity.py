"""The identity of a prediction's tiles, so a rerun never mixes two models in one folder.

Resuming trusts every complete tile already on disk. That is only right when the tiles came
from the same job: the same model weights and the same options that decide their pixels.
:func:`claim_output` records those in ``<out>/job_identity.json`` and refuses a rerun whose
identity differs (:class:`JobMismatchError`, naming the fields), unless ``overwrite`` asks
to replace the old tiles.

Part of the identity (``pixels``): the model (SHA-256 of its weights, as the checkpoint or
ONNX digests in :mod:`membrane_py.train.checkpoint` and :mod:`membrane_py.infer.onnx_backend`
compute it while loading; the predictor carries it), the source volume (its spec, or for
VAST the layer number and name) and shape,
and ``mip``, ``outputs``, ``prob_class``, ``tile``, ``chunk``, ``margin``, ``backend``,
``device`` (precision differs between devices), ``skip_blank`` and ``blank_entropy``, and,
when not at their defaults (so folders written before they existed still resume),
``tta``, ``uncertainty``, ``precision``, ``calibration`` and ``adapt_bn``. Not
part of it: options that change what is done but not the pixels (region, prefetch, pyramid,
zarr, load_in_vast, layer_name, vast).

The file also records ``membrane_threshold``, the threshold the checkpoint chose by
whole-section validation (:mod:`membrane_py.train.section_validation`; null when it has
none), which ``membrane instances`` reads for the probabilities written here
(:func:`recorded_threshold`).

An overwrite run marks the identity ``overwrite_pending`` until it finishes; an interrupted
one leaves old and new tiles side by side, so only another overwrite run may continue it.
A folder written before identities existed is adopted as is (its tiles cannot be checked).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from membrane_py.atomic import write_text_atomic
from membrane_py.predict.job import PredictJob
from membrane_py.vastapi.address import parse_vast_address
from membrane_py.volumes.base import VolumeSource

IDENTITY_FILE = "job_identity.json"
FORMAT = "membrane-py-job-identity"
VERSION = 1
#: pixel-deciding job fields added later, with the defaults that leave pixels as before
_NEW_FIELDS = {"tta": 1, "uncertainty": False, "precision": "auto", "calibration": None,
               "adapt_bn": False}


#: how a prediction into a folder of other tiles can go on, unless its caller says otherwise
OVERWRITE_FIX = "rerun with overwrite (--overwrite) to replace them, or write into another folder"


class JobMismatchError(ValueError):
    """The output folder holds tiles of a different job: ``problem`` says which fields
    differ, ``fix`` how to go on (by default, how to replace them)."""

    def __init__(self, problem: str, fix: str = OVERWRITE_FIX) -> None:
        super().__init__(problem, fix)
        self.problem, self.fix = problem, fix

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}"


def pixel_identity(job: PredictJob, volume: VolumeSource, model_sha256: str) -> dict:
    """Everything that decides the pixels of the job's tiles (see the module docstring)."""
    if parse_vast_address(job.source) is not None:
        source = f"VAST layer {job.layer} ({volume.name})"
    else:
        source = str(Path(job.source).resolve()) if Path(job.source).exists() else job.source
    return {"model": model_sha256, "source": source,
            "volume_shape": list(volume.shape), "mip": job.mip,
            "outputs": sorted(set(job.outputs)), "prob_class": job.prob_class,
            "tile": job.tile, "chunk": list(job.chunk), "margin": job.margin,
            "backend": job.backend, "device": job.device, "skip_blank": job.skip_blank,
            "blank_entropy": job.blank_entropy,
            **{k: getattr(job, k) for k, default in _NEW_FIELDS.items()
               if getattr(job, k) != default}}


def _write(path: Path, pixels: dict, checkpoint: str, pending: bool,
           threshold: float | None) -> None:
    write_text_atomic(path, json.dumps({"format": FORMAT, "version": VERSION,
                                        "checkpoint": checkpoint, "overwrite_pending": pending,
                                        "membrane_threshold": threshold,
                                        "pixels": pixels}, indent=1) + "\n")


def recorded_threshold(source: str | Path) -> tuple[float, Path] | None:
    """The membrane threshold ``membrane predict`` recorded for the prediction ``source``
    (a ``.vsvi``, ``.zarr`` or tile folder written into a prediction folder), and the file
    it is recorded in; None when the source is no such output or its model chose none."""
    path = Path(source)
    for folder in (path.parent, path.parent.parent):
        identity = folder / IDENTITY_FILE
        if identity.is_file():
            try:
                value = json.loads(identity.read_text(encoding="utf-8")).get(
                    "membrane_threshold")
            except (ValueError, AttributeError):
                return None
            ok = isinstance(value, int | float) and 0 < value <= 1
            return (float(value), identity) if ok else None
    return None


def _differences(old: dict, new: dict, old_checkpoint: str, new_checkpoint: str) -> list[str]:
    """One phrase per differing field; the model is named by file and short digest."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        default = _NEW_FIELDS.get(key)  # a later field is recorded only when not its default
        a, b = old.get(key, default), new.get(key, default)
        if a == b:
            continue
        if key == "model":
            diffs.append(f"model {old_checkpoint} (weights {str(a)[:12]}) -> {new_checkpoint} "
                         f"(weights {str(b)[:12]})")
        else:
            diffs.append(f"{key} {a!r} -> {b!r}")
    return diffs


@contextmanager
def claim_output(job: PredictJob, volume: VolumeSource, model_sha256: str,
                 threshold: float | None = None) -> Iterator[None]:
    """Check ``job`` (whose model has the weights digest ``model_sha256``, as the loaded
    predictor reports it) against the identity recorded in its output folder and record its own
    with the model's membrane ``threshold``;
    raise :class:`JobMismatchError` when they differ and ``job.overwrite`` is off. Wrap the
    writing: an overwrite run stays marked pending unless the block completes."""
    path = Path(job.out) / IDENTITY_FILE
    pixels = pixel_identity(job, volume, model_sha256)
    if path.is_file() and not job.overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            old_pixels, old_checkpoint = old["pixels"], old["checkpoint"]
            pending = bool(old["overwrite_pending"])
        except (ValueError, KeyError, TypeError) as exc:
            raise JobMismatchError(f"{path} is unreadable ({exc}), so the tiles in {job.out} "
                                   "cannot be matched to this job") from exc
        if pending:
            raise JobMismatchError(f"an overwrite run into {job.out} was interrupted, so it "
                                   "holds tiles of two jobs")
        diffs = _differences(old_pixels, pixels, old_checkpoint, job.checkpoint)
        if diffs:
            raise JobMismatchError(f"{job.out} holds tiles of a different prediction "
                                   f"({'; '.join(diffs)})")
    _write(path, pixels, job.checkpoint, job.overwrite, threshold)
    yield
    if job.overwrite:
        _write(path, pixels, job.checkpoint, False, threshold)
