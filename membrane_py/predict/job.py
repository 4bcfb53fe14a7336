"""The prediction job spec shared by the CLI, the GUI, the worker and the Python API.

A :class:`PredictJob` is plain data (a :class:`~membrane_py.jobs.spec.JobSpec`): where the EM
comes from, which network, which part of the volume, what to write and how. All user-facing
coordinates are mip 0 and in VAST's x, y, z order, as VAST displays them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from membrane_py.geometry import Box
from membrane_py.infer.precision import PRECISIONS
from membrane_py.jobs.spec import JobSpec
from membrane_py.vastapi.address import DEFAULT_VAST, parse_vast_address
from membrane_py.volumes.base import check_voxel_size

#: what can be written: the probability of one class (8-bit, 1..255), the class map,
#: an RGB image of three class probabilities, or one probability folder per class
OUTPUT_KINDS = ("probability", "classes", "rgb", "per_class")
#: which part of the volume: all, a box, cubes around VAST's view, each skeleton's anchor
#: point (as mEMbrain) or each skeleton node
REGION_MODES = ("volume", "box", "view", "anchors", "nodes")
BACKENDS = ("auto", "torch", "onnx")
SCHEDULER_FORMS = "local, local:N (N worker processes) or tcp://HOST:PORT (a running cluster)"


def parse_scheduler(text: str) -> tuple[str, int | None]:
    """``local`` / ``local:N`` -> ("local", N or None: one worker per core);
    ``tcp://HOST:PORT`` (or ``tls://``) -> (address, None)."""
    if text.startswith(("tcp://", "tls://")):
        host, _, port = text.split("://", 1)[1].rpartition(":")
        if host and port.isdigit():
            return text, None
    elif text == "local":
        return "local", None
    elif text.startswith("local:") and text[6:].isdigit() and int(text[6:]) >= 1:
        return "local", int(text[6:])
    raise ValueError(f"bad scheduler {text!r}; use {SCHEDULER_FORMS}")


@dataclass
class RegionSpec:
    """Which part of the volume to predict (mip-0 voxels, VAST's x, y, z order).

    ``box``: inclusive ``minx, maxx, miny, maxy, minz, maxz`` (as VAST's coordinates read).
    ``view`` / ``anchors`` / ``nodes``: a cube ``size_xy`` wide and ``depth`` sections deep
    centred on VAST's view centre, on each skeleton's anchor point, or on each skeleton
    node; overlapping cubes are merged. ``points`` (x, y, z) replaces the points asked
    from VAST (so cube modes also work without VAST); ``anno_layer`` picks VAST's
    annotation layer (default: the selected one). A box reaching outside the volume is an
    error that prints the volume's extent; with ``clip`` it is cut to the volume with a
    warning (:func:`~membrane_py.geometry.box_in_volume`). Cubes are always clipped.
    """

    mode: str = "volume"
    box: list[int] | None = None
    size_xy: int = 2048
    depth: int = 16
    points: list[list[int]] | None = None
    anno_layer: int | None = None
    clip: bool = False

    def __post_init__(self) -> None:
        if self.mode not in REGION_MODES:
            raise ValueError(f"region mode must be one of {REGION_MODES}, got {self.mode!r}")
        if self.mode == "box" and self.box is None:
            raise ValueError("region 'box' needs box = [minx, maxx, miny, maxy, minz, maxz] "
                             "(mip 0, inclusive)")
        if self.box is not None:
            Box.from_vast_list(self.box)
        if self.size_xy < 1 or self.depth < 1:
            raise ValueError(f"cube size must be >= 1, got size_xy={self.size_xy}, "
                             f"depth={self.depth}")
        if self.points is not None and any(len(p) != 3 for p in self.points):
            raise ValueError("points must be [x, y, z] triples (mip 0)")


@dataclass
class PredictJob(JobSpec):
    """Everything one prediction run needs.

    ``source``: ``vast://host:port`` (EM layer ``layer`` of a running VAST or mock server),
    ``synthetic[:ZxYxX[:SEED]]`` or any path :func:`~membrane_py.volumes.open_volume`
    accepts. ``checkpoint``: one model (``.pt`` or ``.onnx``), or a list of models that all
    predict each chunk read once, each into ``<out>/<model file stem>/`` with the VAST
    layer ``"<layer_name> (<stem>)"`` (:meth:`per_model`). ``vast`` names the VAST to ask
    for the view / skeletons and to load the result into when the source is not VAST
    itself. ``prob_class`` (name or 1-based number) is
    the class of the ``probability`` output (default: "membrane", else the last class).
    ``chunk`` is (z, y, x) at the predicted mip, read with ``margin`` px of context;
    ``tile`` is the side of the written PNGs (1024 in mEMbrain's layout). ``voxel_size``
    (nm, VAST's x, y, z order) is what the ``.vsvi`` and OME-Zarr outputs record; default:
    the source's own (a source without one gets a warning and 1 nm). ``scheduler``
    runs the chunks as Dask tasks (:func:`parse_scheduler`); None predicts in this process.

    Quality and speed: ``tta`` averages each tile over the first ``tta`` of the 8 flips /
    rotations (1: off; :data:`membrane_py.infer.engine.DIHEDRAL`), and ``uncertainty``
    writes one more probability-like output, ``uncertainty``: the spread between the
    augmented predictions, or without them (``tta`` 1) the binary entropy of the
    probabilities (:meth:`~membrane_py.infer.engine.TiledPredictor.predict_with_uncertainty`).
    ``precision`` is ``fp32``, ``bf16``, ``int8`` or ``auto``
    (:mod:`membrane_py.infer.precision`); ``int8`` calibrates on patches of the volume
    itself, or of the volume or image folder ``calibration`` names. ``adapt_bn`` re-estimates
    the network's batch-norm statistics on 32 patches of that same EM before predicting
    (:mod:`membrane_py.infer.batchnorm`; .pt checkpoints with batch norm); None (the
    default): when the checkpoint asks for it, having validated better so in training.
    """

    kind: ClassVar[str] = "predict"
    resumes: ClassVar[bool] = True

    checkpoint: str | list[str]
    source: str = DEFAULT_VAST
    out: str = "predictions"
    layer: int = 0
    vast: str | None = None
    backend: str = "auto"
    device: str = "auto"
    mip: int = 0
    region: RegionSpec = field(default_factory=RegionSpec)
    layer_name: str = "membrane prediction"
    outputs: list[str] = field(default_factory=lambda: ["probability"])
    prob_class: str | None = None
    pyramid: bool = True
    zarr: bool = False
    load_in_vast: bool = False
    skip_blank: bool = True
    blank_entropy: float = 1.0
    overwrite: bool = False
    chunk: list[int] = field(default_factory=lambda: [16, 1024, 1024])
    margin: int = 64
    tile: int = 1024
    prefetch: int = 2
    voxel_size: list[float] | None = None
    scheduler: str | None = None
    tta: int = 1
    uncertainty: bool = False
    precision: str = "auto"
    calibration: str | None = None
    adapt_bn: bool | None = None

    def __post_init__(self) -> None:
        check_voxel_size(self.voxel_size)
        self._check_models()
        bad = [o for o in self.outputs if o not in OUTPUT_KINDS]
        checks = [
            (bool(self.outputs) and not bad,
             f"outputs must be a non-empty list of {OUTPUT_KINDS}, got {self.outputs}"),
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}"),
            (self.mip >= 0, f"mip must be >= 0, got {self.mip}"),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            (self.tile >= 16, f"tile must be >= 16 px, got {self.tile}"),
            (len(self.chunk) == 3 and min(self.chunk) >= 1,
             f"chunk must be three positive numbers (z, y, x), got {self.chunk}"),
            (len(self.chunk) == 3 and all(c % self.tile == 0 for c in self.chunk[1:]),
             f"chunk y and x ({self.chunk[1:]}) must be multiples of the tile size {self.tile}"),
            (self.prefetch >= 0, "prefetch must be >= 0"),
            (1 <= self.tta <= 8, f"tta must be 1 (off) .. 8 (all flips and rotations), got "
                                 f"{self.tta}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.scheduler is None or self.precision != "int8",
             "int8 does not run on a Dask cluster yet (each worker would calibrate its own "
             "model): use --precision fp32 or bf16 with --scheduler"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        parse_vast_address(self.source)
        if self.scheduler is not None:
            parse_scheduler(self.scheduler)
        if self.vast is not None and parse_vast_address(self.vast) is None:
            raise ValueError(f"vast must be a VAST address like {DEFAULT_VAST}, got {self.vast!r}")

    def _check_models(self) -> None:
        models = self.checkpoints
        if not models:
            raise ValueError("give at least one model (checkpoint)")
        stems = [Path(m).stem for m in models]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise ValueError(f"two models are named {twice[0]!r}, and each model writes into "
                             "<out>/<file name without extension>: rename one of them")
        if len(models) > 1 and self.scheduler is not None:
            raise ValueError("several models run in one process: drop the scheduler, or run "
                             "one model per job on the cluster")

    @property
    def checkpoints(self) -> list[str]:
        """The job's models as a list (one for the common single-model job)."""
        return [self.checkpoint] if isinstance(self.checkpoint, str) else list(self.checkpoint)

    def per_model(self) -> list[PredictJob]:
        """One single-model job per model: the job itself for one model; for several, each
        into ``<out>/<stem>/`` with the layer ``"<layer_name> (<stem>)"``."""
        models = self.checkpoints
        if len(models) == 1:
            return [replace(self, checkpoint=models[0])]
        return [replace(self, checkpoint=m, out=str(Path(self.out) / Path(m).stem),
                        layer_name=f"{self.layer_name} ({Path(m).stem})") for m in models]

    @property
    def vast_address(self) -> tuple[str, int] | None:
        """The VAST to talk to (the source when it is VAST, else ``vast``), or None."""
        return parse_vast_address(self.source) or (
            parse_vast_address(self.vast) if self.vast else None)
