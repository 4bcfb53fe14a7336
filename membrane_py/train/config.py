"""The training job spec shared by the CLI, the GUI, the worker and the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.jobs.spec import JobSpec
from membrane_py.models.unet import ARCHS, UNetConfig
from membrane_py.train.transfer_modes import TRANSFER_MODES

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "step", "cosine")
LABEL_FORMATS = ("codes", "isbi", "classes")
# validation metric used to keep the best checkpoint -> True when higher is better
BEST_METRICS = {"val_loss": False, "val_pixel_error": False, "val_miou": True, "val_v_rand": True,
                "val_v_info": True}


@dataclass
class TrainJob(JobSpec):
    """Everything a training run needs; JSON-serialisable (``to_dict`` / ``from_dict``).

    Data: ``image_dir`` / ``label_dir`` hold matching image files (sorted by name). Labels are
    ``codes`` (mEMbrain PNG codes: class k stored as round(255 (k-1)/(K-1))), ``isbi`` (binary,
    0 = membrane, 255 = interior -> 1 non-membrane, 2 membrane) or ``classes`` (values are
    classes, 0 = unknown). The split into training and validation is by image.

    Transfer learning: ``pretrained`` names the checkpoint to start from (a different class
    count gets a new output layer, everything else is loaded); ``transfer_mode`` picks which
    weights train (``continuous``, ``last_layer``, ``freeze_encoder`` or ``leaky`` with the
    encoder at ``leaky_ratio`` x ``lr``; see :mod:`membrane_py.train.transfer_modes`). ``episodic``
    lists earlier data sets, ``{"images": dir, "labels": dir}`` plus an optional
    ``"label_format"``, replayed as an ``episodic_ratio`` share of every batch
    (:mod:`membrane_py.train.episodic`); it combines with any mode.
    """

    kind: ClassVar[str] = "train"

    image_dir: str = ""
    label_dir: str = ""
    out_dir: str = "runs"
    name: str = "unet"
    label_format: str = "codes"
    n_classes: int | None = None
    class_names: list[str] | None = None
    patch_size: int = 256
    patches_per_epoch: int = 1024
    val_patches: int = 128
    val_fraction: float = 0.3
    augment: bool = True
    # model
    arch: str = "unet"
    depth: int = 5
    base_filters: int = 32
    norm: str = "batch"
    dropout: float = 0.0
    # optimisation
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    step_epochs: int = 2
    step_factor: float = 0.1
    loss: str = "ce"
    class_weights: list[float] | None = None
    shuffle: bool = True
    seed: int = 0
    # execution
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    num_workers: int = 0
    best_metric: str = "val_loss"
    log_every: int = 10
    resume: str | None = None
    pretrained: str | None = None
    transfer_mode: str = "continuous"
    leaky_ratio: float = 0.1
    episodic: list[dict] = field(default_factory=list)
    episodic_ratio: float = 0.25
    # provenance recorded in the checkpoint
    preprocess: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    mip: int = 0
    voxel_size: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])

    def __post_init__(self) -> None:
        checks = [
            (self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.label_format in LABEL_FORMATS, f"label_format must be one of {LABEL_FORMATS}"),
            (self.best_metric in BEST_METRICS, f"best_metric must be one of {list(BEST_METRICS)}"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.patch_size % 2**self.depth == 0,
             f"patch_size {self.patch_size} must be a multiple of 2**depth = {2**self.depth}"),
            (self.transfer_mode in TRANSFER_MODES,
             f"transfer_mode must be one of {TRANSFER_MODES}"),
            (self.transfer_mode == "continuous" or bool(self.pretrained or self.resume),
             f"transfer_mode {self.transfer_mode!r} needs a pretrained checkpoint"),
            (0.0 < self.leaky_ratio <= 1.0, "leaky_ratio must be in (0, 1]"),
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

    def model_config(self, n_classes: int) -> UNetConfig:
        return UNetConfig(in_channels=1, n_classes=n_classes, depth=self.depth,
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
