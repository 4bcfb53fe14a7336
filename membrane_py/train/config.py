"""The training job spec shared by the CLI, the GUI, the worker and the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from membrane_py.augment.affinities import check_offsets
from membrane_py.augment.labels import LABEL_FORMATS, MAX_CLASSES
from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.jobs.spec import JobSpec
from membrane_py.models.unet import ARCHS, ARCHS_3D, UNetConfig
from membrane_py.train.checkpoint import STARTER, load_checkpoint, model_path
from membrane_py.train.transfer_modes import FROZEN_BN, TRANSFER_MODES
from membrane_py.volumes.base import check_voxel_size

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
#: the value of an execution toggle settled per device (:mod:`membrane_py.train.execution`)
AUTO = "auto"
SCHEDULES = ("none", "step", "cosine")
#: default U-Net size (depth, base filters) per device type: mEMbrain's depth-5 / 32-filter
#: network trains at about 1 patch/s on a 2-core CPU, the depth-4 / 16-filter one (1.9 M
#: instead of 31 M weights) 2.6 to 4 times as fast (bench/train.py); GPUs take the big one
DEFAULT_ARCH = {"cuda": (5, 32), "cpu": (4, 16), "mps": (4, 16)}
TARGETS = ("classes", "affinities")
#: ``TrainJob.pretrained`` value that starts from the starter model when it fits the job
#: (:meth:`TrainJob.with_pretrained`), else from scratch; ``membrane train``'s default
AUTO_PRETRAINED = "auto"
# validation metric used to keep the best checkpoint -> True when higher is better
BEST_METRICS = {"val_loss": False, "val_pixel_error": False, "val_miou": True, "val_v_rand": True,
                "val_v_info": True, "val_section_v_rand": True}
#: what ``best_metric`` accepts: a metric, or ``auto`` (whole-section V_rand when the run
#: validates on whole sections, else the validation loss)
BEST_METRIC_CHOICES = ("auto", *BEST_METRICS)


@dataclass
class TrainJob(JobSpec):
    """Everything a training run needs; JSON-serialisable (``to_dict`` / ``from_dict``).

    Data: ``image_dir`` / ``label_dir`` hold image files paired by name. ``label_format`` is
    ``auto`` (read from the values), ``classes``, ``codes`` or ``isbi`` (see
    :mod:`membrane_py.augment.labels`); more than ``max_classes`` classes is refused. The split
    into training and validation is by image (``val_fraction``), or validation images and labels
    of their own are given (``val_image_dir`` / ``val_label_dir``); up to ``val_sections`` whole
    validation images are predicted and scored each epoch
    (:mod:`membrane_py.train.section_validation`), and ``best_metric`` ``auto`` keeps the
    checkpoint with the best whole-section V_rand (the validation loss when there are no whole
    sections). ``augment`` (None = none) is applied to training patches; the default is every
    augmentation (:meth:`AugmentConfig.all_on`): a network fine-tuned on a few sections with
    flips alone fails on other sections.
    ``depth`` / ``base_filters`` left None take :data:`DEFAULT_ARCH` of the device (or the
    checkpoint resumed); the checkpoint records what was used. ``minutes``
    bounds the training time: the epoch in progress ends early, is validated and saved.

    Execution: ``amp`` (bf16 autocast), ``channels_last``, ``prefetch`` (a data-loading
    thread), ``compile`` (``torch.compile``) and ``threads`` change speed, not the method;
    ``"auto"`` / None are settled per device by :mod:`membrane_py.train.execution`, and the
    checkpoint records the settled values.

    Transfer learning: ``pretrained`` names the checkpoint to start from (a different class
    count gets a new output layer, everything else is loaded): a path, ``starter`` (the
    shipped starter membrane model), ``auto`` (the starter when it fits the job, else
    nothing: :meth:`with_pretrained`) or None (from scratch); ``transfer_mode`` picks which
    weights train (``continuous``, ``last_layer``, ``freeze_encoder`` or ``leaky`` with the
    encoder at ``leaky_ratio`` x ``lr``; see :mod:`membrane_py.train.transfer_modes`);
    ``frozen_bn`` says whether the frozen parts' batch norm keeps the pretrained statistics
    (``pretrained``) or adapts them to the new data (``adapt``). ``episodic``
    lists earlier data sets, ``{"images": dir, "labels": dir}`` plus an optional
    ``"label_format"``, replayed as an ``episodic_ratio`` share of every batch
    (:mod:`membrane_py.train.episodic`); it combines with any mode.

    Target: ``classes`` (one class per pixel, softmax) or ``affinities`` (one sigmoid channel
    per offset in ``offsets``, see :mod:`membrane_py.augment.affinities`; datasets then yield
    uint8 (C, H, W) targets). ``context`` neighbouring sections on each side are extra input
    channels (2.5D; 0 = plain 2D). Both are recorded in the checkpoint (``train_config``, and
    the architecture's ``in_channels``), so prediction feeds the same sections.
    """

    kind: ClassVar[str] = "train"
    resumes: ClassVar[bool] = True

    image_dir: str = ""
    label_dir: str = ""
    out_dir: str = "runs"
    name: str = "unet"
    label_format: str = "auto"
    n_classes: int | None = None
    max_classes: int = MAX_CLASSES
    class_names: list[str] | None = None
    patch_size: int = 256
    patches_per_epoch: int = 1024
    val_patches: int = 128
    val_fraction: float = 0.3
    #: validation images and labels of their own (both or neither): every image of
    #: ``image_dir`` then trains and ``val_fraction`` is not used
    val_image_dir: str = ""
    val_label_dir: str = ""
    #: whole validation sections predicted and scored every epoch (at most; 0 = patches only)
    val_sections: int = 8
    augment: AugmentConfig | None = field(default_factory=AugmentConfig.all_on)
    # target and input
    target: str = "classes"
    context: int = 0
    offsets: list[list[int]] = field(default_factory=lambda: [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # model (None: the device's default, see DEFAULT_ARCH)
    arch: str = "unet"
    depth: int | None = None
    base_filters: int | None = None
    norm: str = "batch"
    dropout: float = 0.0
    # optimisation
    epochs: int = 10
    minutes: float | None = None
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    step_epochs: int = 2
    step_factor: float = 0.1
    loss: str = "weighted_ce"
    class_weights: list[float] | None = None
    shuffle: bool = True
    seed: int = 0
    # execution
    device: str = "auto"
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    num_workers: int = 0
    prefetch: bool = False
    compile: bool = False
    threads: int | None = None
    best_metric: str = "auto"
    log_every: int = 10
    resume: str | None = None
    pretrained: str | None = None
    transfer_mode: str = "continuous"
    leaky_ratio: float = 0.1
    frozen_bn: str = "pretrained"
    episodic: list[dict] = field(default_factory=list)
    episodic_ratio: float = 0.25
    # provenance recorded in the checkpoint
    preprocess: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    mip: int = 0
    #: nm, (z, y, x) as the checkpoint records it; None: unknown (training images carry
    #: none), recorded as 1 nm with a warning asking for --voxel-size
    voxel_size: list[float] | None = None

    def __post_init__(self) -> None:
        check_voxel_size(self.voxel_size)
        checks = [
            (self.arch in ARCHS + ARCHS_3D,
             f"arch must be one of {ARCHS + ARCHS_3D}, got {self.arch!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.target in TARGETS, f"target must be one of {TARGETS}"),
            (self.context >= 0, "context (sections on each side) must be >= 0"),
            (self.context == 0 or self.target == "affinities",
             "context (2.5D input) needs target affinities; class datasets read one section"),
            (self.arch != "unet3d" or (self.target == "affinities" and self.context == 0),
             "arch unet3d (3D patches) trains affinities only, with context 0 (the cube "
             "already holds the neighbouring sections)"),
            (self.target != "affinities" or len(check_offsets(self.offsets)) >= 2,
             "affinities need at least two offsets (e.g. z, y, x neighbours)"),
            (self.label_format in LABEL_FORMATS, f"label_format must be one of {LABEL_FORMATS}"),
            (self.best_metric in BEST_METRIC_CHOICES,
             f"best_metric must be one of {list(BEST_METRIC_CHOICES)}"),
            (self.val_sections >= 0, "val_sections must be >= 0"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (bool(self.val_image_dir) == bool(self.val_label_dir),
             "give validation images and labels together (val_image_dir and val_label_dir, "
             "--val-images and --val-labels), or neither"),
            (not self.val_image_dir or self.target == "classes",
             "affinity training validates on its last sections (val_fraction); leave the "
             "validation folders empty"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.minutes is None or self.minutes > 0, "minutes must be > 0"),
            (self.max_classes >= 2, "max_classes must be >= 2"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.depth is None or self.patch_size % 2**self.depth == 0,
             f"patch_size {self.patch_size} must be a multiple of 2**depth = "
             f"{2**(self.depth or 0)}"),
            (self.transfer_mode in TRANSFER_MODES,
             f"transfer_mode must be one of {TRANSFER_MODES}"),
            (self.transfer_mode == "continuous" or bool(self.pretrained or self.resume),
             f"transfer_mode {self.transfer_mode!r} needs a pretrained checkpoint"),
            (0.0 < self.leaky_ratio <= 1.0, "leaky_ratio must be in (0, 1]"),
            (self.frozen_bn in FROZEN_BN, f"frozen_bn must be one of {FROZEN_BN}"),
            (0.0 < self.episodic_ratio < 1.0, "episodic_ratio must be in (0, 1)"),
            (all(isinstance(e, dict) and {"images", "labels"} <= set(e)
                 and set(e) <= {"images", "labels", "label_format"}
                 and e.get("label_format", self.label_format) in LABEL_FORMATS
                 for e in self.episodic),
             'episodic entries must be {"images": dir, "labels": dir} with an optional '
             f'"label_format" in {LABEL_FORMATS}'),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        for name in ("amp", "channels_last"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or value == AUTO):
                raise ValueError(f"{name} must be true, false or 'auto', got {value!r}")

    def with_architecture(self, device_type: str, source: dict | None = None) -> TrainJob:
        """This job with ``depth`` and ``base_filters`` set: kept when given, else those of
        ``source`` (the architecture dict of a checkpoint being resumed), else the device's
        default (:data:`DEFAULT_ARCH`)."""
        depth, filters = DEFAULT_ARCH.get(device_type, DEFAULT_ARCH["cpu"])
        if source is not None:
            depth, filters = source["depth"], source["base_filters"]
        return replace(self, depth=self.depth or depth,
                                   base_filters=self.base_filters or filters)

    def with_pretrained(self, device_type: str) -> tuple[TrainJob, str]:
        """This job with ``pretrained="auto"`` settled, and the line that says how (empty for
        any other value): the starter model when it has the architecture this job trains on
        ``device_type`` (class count aside: a new output layer), its input channels and its
        preprocessing, else None (from scratch). A resumed run keeps its own weights."""
        if self.pretrained != AUTO_PRETRAINED:
            return self, ""
        if self.resume:
            return replace(self, pretrained=None), ""
        why = self._starter_misfit(device_type)
        if why is None:
            return replace(self, pretrained=STARTER), (
                f"fine-tuning the starter membrane model ({model_path(STARTER).name}); "
                "--pretrained none trains from scratch")
        if self.transfer_mode != "continuous":
            raise ValueError(f"transfer_mode {self.transfer_mode!r} needs a pretrained network "
                             f"and the starter model does not fit: {why}; pass --pretrained")
        return replace(self, pretrained=None), f"training from scratch: {why}"

    def _starter_misfit(self, device_type: str) -> str | None:
        """Why the starter model cannot start this job, or None when it can."""
        if not model_path(STARTER).is_file():
            return f"the starter model {model_path(STARTER)} is missing from this install"
        starter = load_checkpoint(STARTER)
        net = starter.model_config
        if self.target != starter.target:
            return f"the starter model predicts {starter.target}, this job {self.target}"
        mine = self.with_architecture(device_type).model_config(net.n_classes)
        if mine != net:
            def text(c: UNetConfig) -> str:
                return (f"{c.arch} of depth {c.depth}, {c.base_filters} filters, {c.norm} norm, "
                        f"{c.in_channels} input channel(s)")

            return (f"the starter model ({text(net)}) differs from this job's network "
                    f"({text(mine)}); --pretrained starter takes the starter's")
        if self.preprocess_config != starter.preprocess_config:
            return (f"the starter model preprocesses as {starter.preprocess_config}, this job "
                    f"as {self.preprocess_config}")
        return None

    def model_config(self, n_classes: int) -> UNetConfig:
        if self.depth is None or self.base_filters is None:
            raise ValueError("the network size is set when training starts "
                             "(TrainJob.with_architecture)")
        if self.patch_size % 2**self.depth:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of 2**depth = "
                             f"{2**self.depth}; pass --patch-size or --depth")
        return UNetConfig(in_channels=1 + 2 * self.context, n_classes=n_classes, depth=self.depth,
                          base_filters=self.base_filters, norm=self.norm, dropout=self.dropout,
                          arch=self.arch)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def best_path(self) -> Path:
        return Path(self.out_dir) / f"{self.name}.pt"

    @property
    def last_path(self) -> Path:
        return Path(self.out_dir) / f"{self.name}_last.pt"

    def resumed(self) -> TrainJob:
        """This job continuing from its ``<name>_last.pt`` when an interrupted run left one
        (the newest state, even when this job itself resumed from an older checkpoint)."""
        if self.last_path.is_file() and self.resume != str(self.last_path):
            return replace(self, resume=str(self.last_path))
        return self

    @property
    def resume_job_path(self) -> Path:
        """The job file an interrupted run writes: this job resuming from ``last_path``."""
        return Path(self.out_dir) / f"{self.name}_resume.json"
