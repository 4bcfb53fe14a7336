"""The U-Net training loop: any pair of torch Datasets in, checkpoints and logs out.

Datasets yield ``(image float32 (1, H, W), label int64 (H, W))`` with label 0 = unknown.
Each epoch writes ``<name>_last.pt`` (resumable) and, when the validation metric improves,
``<name>.pt``; cancellation also leaves a resumable ``<name>_last.pt``. A run may start from a
pretrained checkpoint in a transfer mode and replay earlier data sets (episodic memory); the
checkpoint's ``lineage`` then records where it came from.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from membrane_py.events import Cancelled, CancelToken, Event, ProgressCallback, report
from membrane_py.jobs.spec import Result
from membrane_py.models import UNet, build_model
from membrane_py.train.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from membrane_py.train.config import BEST_METRICS, TrainJob
from membrane_py.train.device import (
    autocast,
    device_description,
    memory_format,
    pick_device,
    seed_everything,
)
from membrane_py.train.episodic import episodic_loader_parts
from membrane_py.train.logs import TrainingLog
from membrane_py.train.losses import class_weights_from_counts, make_loss
from membrane_py.train.metrics import class_scores, membrane_scores
from membrane_py.train.transfer_modes import load_backbone, parameter_groups, train_mode


@dataclass
class TrainResult(Result):
    """The checkpoints written, the per-epoch history, the device and the time taken."""

    best_path: Path
    last_path: Path
    history: list[dict]
    device: str
    seconds: float

    def summary(self) -> str:
        return (f"best checkpoint: {self.best_path} (device {self.device}, "
                f"{self.seconds:.0f} s)")


def split_by_image(n_images: int, val_fraction: float = 0.3,
                   seed: int = 0) -> tuple[list[int], list[int]]:
    """Random (train, validation) image indices; at least one of each when n_images >= 2
    and val_fraction > 0. Splitting images (not patches) keeps validation honest."""
    if n_images < 1:
        raise ValueError("no images to split")
    perm = np.random.default_rng(seed).permutation(n_images)
    n_val = round(n_images * val_fraction)
    if val_fraction > 0 and n_images >= 2:
        n_val = min(max(n_val, 1), n_images - 1)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def default_class_names(n_classes: int) -> list[str]:
    return ["non-membrane", "membrane"] if n_classes == 2 else [
        f"class{k}" for k in range(1, n_classes + 1)]


def make_optimizer(params, cfg: TrainJob) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay or 1e-2)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainJob):
    """Per-epoch schedule: constant, step drop (mEMbrain's 'piecewise') or cosine to 0."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_epochs, gamma=cfg.step_factor)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _epoch: 1.0)


def _count_classes(ds: Dataset, n_classes: int, max_items: int = 64) -> list[int]:
    counts = np.zeros(n_classes + 1, dtype=np.int64)
    for i in range(min(len(ds), max_items)):
        counts += np.bincount(np.asarray(ds[i][1]).ravel(), minlength=n_classes + 1)[:n_classes + 1]
    return counts[1:].tolist()


@torch.no_grad()
def validate(model: UNet, loader: DataLoader, loss_fn, device: torch.device, amp: bool,
             class_names: list[str]) -> dict[str, float]:
    """Mean validation loss, pixel error, mean IoU and (membrane maps) mean V_rand / V_info."""
    model.eval()
    n_classes = len(class_names)
    losses, scores = [], []
    membrane = n_classes == 2 and class_names[-1] == "membrane"
    fmt = memory_format(device)
    for x, y in loader:
        x = x.to(device, memory_format=fmt)
        y = y.to(device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        losses.append(float(loss_fn(logits, y)) * len(x))
        prob = torch.softmax(logits, dim=1).cpu().numpy()
        labels = y.cpu().numpy()
        for p, t in zip(prob, labels, strict=True):
            if not (t > 0).any():
                continue
            s = class_scores(p.argmax(0) + 1, t, n_classes, class_names)
            if membrane and (t == 1).any():
                m = membrane_scores(p[1], t)
                s.update(v_rand=m["v_rand"], v_info=m["v_info"])
            scores.append(s)
    out = {"val_loss": sum(losses) / max(1, len(loader.dataset))}
    if scores:
        out["val_pixel_error"] = float(np.nanmean([s["pixel_error"] for s in scores]))
        ious = [[s[f"iou_{c}"] for c in class_names] for s in scores]
        out["val_miou"] = float(np.nanmean(ious))
        for key in ("v_rand", "v_info"):
            vals = [s[key] for s in scores if key in s]
            if vals:
                out[f"val_{key}"] = float(np.mean(vals))
    return out


def _class_names(cfg: TrainJob, n_classes: int, source: Checkpoint | None) -> list[str]:
    """The config's names, else those of the checkpoint we start from when the class count is
    unchanged, else the defaults."""
    if cfg.class_names:
        names = list(cfg.class_names)
    elif source is not None and len(source.class_names) == n_classes:
        names = list(source.class_names)
    else:
        names = default_class_names(n_classes)
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    return names


def _start_from(model: UNet, parent: Checkpoint, cfg: TrainJob,
                memory: Sequence[Dataset]) -> dict:
    """Load the pretrained ``parent`` into ``model`` (a new head when the class count differs)
    and return the lineage the new checkpoints record."""
    mine = model.config
    if dataclasses.replace(parent.model_config, n_classes=mine.n_classes) != mine:
        raise ValueError(f"pretrained network {cfg.pretrained} has architecture {parent.model}, "
                         f"not {mine.to_dict()}; match depth, filters and normalisation to it")
    new_head = load_backbone(model, parent.state_dict)
    return {
        "parent": str(cfg.pretrained), "parent_sha256": file_sha256(cfg.pretrained),
        "mode": cfg.transfer_mode,
        "leaky_ratio": cfg.leaky_ratio if cfg.transfer_mode == "leaky" else None,
        "new_head": new_head, "parent_classes": list(parent.class_names),
        "data": {"images": cfg.image_dir, "labels": cfg.label_dir},
        "episodic": ({"ratio": cfg.episodic_ratio,
                      "data": cfg.episodic or [type(m).__name__ for m in memory]}
                     if memory else None),
        "parent_epochs": len(parent.history), "parent_lineage": parent.lineage,
    }


def _improved(value: float | None, best: dict, higher_better: bool) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if "value" not in best:
        return True
    return value > best["value"] if higher_better else value < best["value"]


def train_model(train_ds: Dataset, val_ds: Dataset | None, cfg: TrainJob, *,
                n_classes: int | None = None, memory: Sequence[Dataset] = (),
                progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> TrainResult:
    """Train a U-Net on ``train_ds``, validating on ``val_ds`` each epoch (see module doc).

    ``memory`` holds earlier data sets (same classes and preprocessing) replayed as a
    ``cfg.episodic_ratio`` share of every batch; ``cfg.episodic``, when set, describes them.
    """
    start = time.perf_counter()
    device = pick_device(cfg.device)
    gen = seed_everything(cfg.seed)
    n_classes = n_classes or getattr(train_ds, "n_classes", None) or cfg.n_classes
    if not n_classes:
        raise ValueError("number of classes unknown: set TrainJob.n_classes or give a dataset "
                         "with an n_classes attribute")
    for ds in (train_ds, *memory):
        ds_pre = getattr(ds, "preprocess", None)
        if ds_pre is not None and hasattr(ds_pre, "to_dict") and \
                ds_pre.to_dict() != cfg.preprocess:
            raise ValueError(f"a dataset preprocesses with {ds_pre.to_dict()} but the config "
                             f"records {cfg.preprocess}; build both from the same PreprocessConfig")
    if cfg.episodic and len(cfg.episodic) != len(memory):
        raise ValueError(f"cfg.episodic names {len(cfg.episodic)} data sets but {len(memory)} "
                         "memory datasets were given (run_training builds them from the folders)")
    resumed = load_checkpoint(cfg.resume) if cfg.resume else None
    parent = load_checkpoint(cfg.pretrained) if cfg.pretrained and resumed is None else None
    class_names = _class_names(cfg, n_classes, resumed or parent)
    model_cfg = cfg.model_config(n_classes)
    model = build_model(model_cfg)
    lineage = _start_from(model, parent, cfg, memory) if parent is not None else {}
    fmt = memory_format(device, cfg.channels_last)
    model.to(device, memory_format=fmt)
    opt = make_optimizer(parameter_groups(model, cfg.transfer_mode, cfg.lr, cfg.leaky_ratio), cfg)
    sched = make_scheduler(opt, cfg)
    first_epoch, history, best = 0, [], {}
    if resumed is not None:
        if resumed.model_config != model_cfg:
            raise ValueError(f"cannot resume {cfg.resume}: its architecture {resumed.model} "
                             f"differs from the config's {model_cfg.to_dict()}")
        model.load_state_dict(resumed.state_dict)
        if resumed.optimizer:
            opt.load_state_dict(resumed.optimizer)
        if resumed.scheduler:
            sched.load_state_dict(resumed.scheduler)
        first_epoch, history, best = resumed.epoch, list(resumed.history), dict(resumed.best)
        lineage = resumed.lineage

    weights = cfg.class_weights
    if cfg.loss == "weighted_ce" and weights is None:
        weights = class_weights_from_counts(_count_classes(train_ds, n_classes)).tolist()
    loss_fn = make_loss(cfg.loss, weights)
    loader_opts = {"num_workers": cfg.num_workers, "pin_memory": device.type == "cuda",
                   "persistent_workers": cfg.num_workers > 0}
    if memory:
        mixed, batches = episodic_loader_parts(train_ds, memory, cfg.batch_size,
                                               cfg.episodic_ratio, cfg.shuffle, cfg.seed)
        loader = DataLoader(mixed, batch_sampler=batches, **loader_opts)
    else:
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=cfg.shuffle,
                            generator=gen, drop_last=len(train_ds) >= cfg.batch_size,
                            **loader_opts)
    val_loader = (DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
                  if val_ds is not None and len(val_ds) else None)
    metric = cfg.best_metric if val_loader is not None else "train_loss"
    higher_better = BEST_METRICS.get(metric, False)
    desc = device_description(device)
    log = TrainingLog(cfg, n_classes, desc)
    iters = len(loader)
    total = cfg.epochs * iters

    def snapshot(epoch: int) -> Checkpoint:
        return Checkpoint(
            state_dict=model.state_dict(), model=model_cfg.to_dict(), class_names=class_names,
            preprocess=cfg.preprocess, mip=cfg.mip, voxel_size=list(cfg.voxel_size),
            patch_size=cfg.patch_size, history=history,
            train_config={**cfg.to_dict(), "class_weights": weights}, lineage=lineage,
            epoch=epoch, optimizer=opt.state_dict(), scheduler=sched.state_dict(), best=best)

    for epoch in range(first_epoch, cfg.epochs):
        train_mode(model, cfg.transfer_mode)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(loader):
            if cancel is not None and cancel.cancelled:
                save_checkpoint(cfg.last_path, snapshot(epoch))
                log.note(f"cancelled in epoch {epoch + 1}; resume from {cfg.last_path}")
                raise Cancelled(f"training cancelled; resume with resume={cfg.last_path}")
            x = x.to(device, non_blocking=True, memory_format=fmt)
            y = y.to(device, non_blocking=True)
            with autocast(device, cfg.amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            done = epoch * iters + i + 1
            if (i + 1) % cfg.log_every == 0 or i + 1 == iters:
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss became {value} at epoch {epoch + 1}, iteration "
                                             f"{i + 1}; lower the learning rate")
                its = {"loss": value, "epoch": epoch + 1, "iteration": done,
                       "lr": opt.param_groups[0]["lr"]}
                log.record("iter", its)
                report(progress, Event.progress("train", done, total,
                                                f"epoch {epoch + 1}, loss {value:.4f}"))
                report(progress, Event.metric("train", done, total, "iteration", **its))
        record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(1, iters),
                  "lr": opt.param_groups[0]["lr"]}
        sched.step()
        if val_loader is not None:
            record.update(validate(model, val_loader, loss_fn, device, cfg.amp, class_names))
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        improved = _improved(record.get(metric), best, higher_better)
        if improved:
            best = {"metric": metric, "value": record[metric], "epoch": epoch + 1}
        ck = snapshot(epoch + 1)
        save_checkpoint(cfg.last_path, ck)
        if improved:
            save_checkpoint(cfg.best_path, ck)
        log.epoch(record)
        report(progress, Event.metric("train", (epoch + 1) * iters, total, "epoch", **record))
        report(progress, Event.artifact(cfg.last_path, "train", "last checkpoint"))
    if not cfg.best_path.exists():  # resumed after the last epoch, or no finite metric
        save_checkpoint(cfg.best_path, snapshot(cfg.epochs))
    report(progress, Event.artifact(cfg.best_path, "train", "best checkpoint"))
    return TrainResult(cfg.best_path, cfg.last_path, history, desc, time.perf_counter() - start)


def convert_labels(raw: list[np.ndarray], label_format: str,
                   n_classes: int | None = None) -> tuple[list[np.ndarray], int]:
    """Label images as read from disk -> class maps (0 unknown, 1..K) and K."""
    from membrane_py.augment import labels as L
    from membrane_py.codes import decode_label_png, infer_n_classes

    if label_format == "isbi":
        return [L.binary_to_classes(r, membrane_value=0) for r in raw], 2
    if label_format == "codes":
        if n_classes is None:
            n_classes = infer_n_classes(np.concatenate([np.unique(r) for r in raw]))
        return [decode_label_png(r, n_classes).astype(np.uint8) for r in raw], n_classes
    if label_format == "classes":
        top = max(int(r.max()) for r in raw)
        return list(raw), max(n_classes or 0, top, 2)
    raise ValueError(f"unknown label format {label_format!r}")


def read_pairs(image_dir: str | Path, label_dir: str | Path, label_format: str,
               n_classes: int | None = None):
    """(paths, uint8 images, class maps, K) for matching image/label files of two folders."""
    from membrane_py.augment import labels as L
    from membrane_py.augment.patches import pair_by_name

    pairs = pair_by_name(L.list_images(image_dir), L.list_images(label_dir))
    images = []
    for p, _ in pairs:
        im = L.read_image(p)
        if im.dtype != np.uint8 or im.ndim != 2:
            raise ValueError(f"{p}: EM images must be 8-bit grayscale, got {im.dtype} {im.shape}")
        images.append(im)
    raw = [L.decode_label_image(L.read_image(q)) for _, q in pairs]
    labels, k = convert_labels(raw, label_format, n_classes)
    return [p for p, _ in pairs], images, labels, k


def folder_datasets(cfg: TrainJob, image_dir: str, label_dir: str, label_format: str,
                    val_fraction: float) -> tuple[Dataset, Dataset | None, int]:
    """Training and validation datasets from two folders, split by image. Images of exactly
    ``patch_size`` are used as patches (a patch folder); larger ones are sampled on the fly
    (saturated patches with rotation)."""
    from torch.utils.data import Subset

    from membrane_py.augment.dataset import OnTheFlyPatchDataset, PatchDataset
    from membrane_py.augment.transforms import AugmentConfig

    if not image_dir or not label_dir:
        raise ValueError("set image_dir and label_dir (folders of matching images and labels)")
    aug = AugmentConfig() if cfg.augment else None
    paths, images, labels, k = read_pairs(image_dir, label_dir, label_format, cfg.n_classes)
    train_idx, val_idx = split_by_image(len(images), val_fraction, cfg.seed)
    pre = cfg.preprocess_config
    if all(im.shape == (cfg.patch_size, cfg.patch_size) for im in images) and \
            label_format == "codes":
        train = Subset(PatchDataset(image_dir, label_dir, pre, aug, cfg.seed, k), train_idx)
        val = Subset(PatchDataset(image_dir, label_dir, pre, None, cfg.seed, k), val_idx)
        return train, (val if val_idx else None), k

    def on_the_fly(idx: list[int], length: int, augment, seed: int, rotate: bool):
        return OnTheFlyPatchDataset([images[i] for i in idx], [labels[i] for i in idx],
                                    cfg.patch_size, length, pre, augment, seed, rotate=rotate)

    train = on_the_fly(train_idx, cfg.patches_per_epoch, aug, cfg.seed, True)
    val = on_the_fly(val_idx, cfg.val_patches, None, cfg.seed + 1, False) if val_idx else None
    return train, val, k


def build_datasets(cfg: TrainJob) -> tuple[Dataset, Dataset | None, list[Dataset], int]:
    """Training, validation and episodic-memory datasets of a job, and its class count K.
    Memory data sets are used whole (no validation split) and must have the same K."""
    train, val, k = folder_datasets(cfg, cfg.image_dir, cfg.label_dir, cfg.label_format,
                                    cfg.val_fraction)
    memory = []
    for e in cfg.episodic:
        old, _, k_old = folder_datasets(cfg, e["images"], e["labels"],
                                        e.get("label_format", cfg.label_format), 0.0)
        if k_old != k:
            raise ValueError(f"episodic data {e['labels']} has {k_old} classes, the new data {k}")
        memory.append(old)
    return train, val, memory, k


def run_training(cfg: TrainJob, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> TrainResult:
    """The whole job: read and split the data, train, write checkpoints and logs."""
    train, val, memory, k = build_datasets(cfg)
    return train_model(train, val, cfg, n_classes=k, memory=memory, progress=progress,
                       cancel=cancel)
