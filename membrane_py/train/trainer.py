"""The U-Net training loop: any pair of torch Datasets in, checkpoints and logs out.

Datasets yield ``(image float32 (1, H, W), label int64 (H, W))`` with label 0 = unknown, or
for ``target="affinities"`` ``(image float32 (2 * context + 1, H, W), affinities uint8
(C, H, W))`` (:class:`membrane_py.augment.dataset.AffinityPatchDataset`).
Each epoch writes ``<name>_last.pt`` (resumable) and, when the validation metric improves,
``<name>.pt``. Cancellation or Ctrl-C (KeyboardInterrupt), also mid-epoch, saves
``<name>_last.pt`` and ``<name>_resume.json`` (the job resuming from it) and raises
:class:`~membrane_py.events.Cancelled` saying how to resume. ``TrainJob.minutes`` ends the run
at a time budget: the epoch in progress is cut short, validated and saved. A run may start from a
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

from membrane_py.atomic import write_text_atomic
from membrane_py.augment.labels import MAX_CLASSES
from membrane_py.events import (
    Cancelled,
    CancelToken,
    Event,
    ProgressCallback,
    check_cancel,
    report,
    warn,
)
from membrane_py.jobs.spec import Result
from membrane_py.models import UNet, build_model
from membrane_py.train.checkpoint import (
    Checkpoint,
    file_sha256,
    load_checkpoint,
    model_path,
    save_checkpoint,
)
from membrane_py.train.config import AUTO_PRETRAINED, BEST_METRICS, TrainJob
from membrane_py.train.device import (
    autocast,
    device_description,
    memory_format,
    pick_device,
    seed_everything,
)
from membrane_py.train.episodic import episodic_loader_parts
from membrane_py.train.execution import prefetched, resolve_execution, settled
from membrane_py.train.logs import TrainingLog
from membrane_py.train.losses import affinity_bce, class_weights_from_counts, make_loss
from membrane_py.train.metrics import class_scores, membrane_scores
from membrane_py.train.schedule import Schedule
from membrane_py.train.section_validation import (
    Sections,
    best_section_scores,
    usable_sections,
    whole_sections,
)
from membrane_py.train.transfer_modes import (
    frozen_parts,
    load_backbone,
    parameter_groups,
    train_mode,
)


@dataclass
class TrainResult(Result):
    """The checkpoints written, the per-epoch history, the device and the time taken;
    ``threshold``: the membrane threshold the best checkpoint records (None without
    whole-section validation); ``adapt_bn``: whether it validated better with its batch norm
    adapted to the sections (prediction then adapts by default)."""

    best_path: Path
    last_path: Path
    history: list[dict]
    device: str
    seconds: float
    threshold: float | None = None
    adapt_bn: bool = False

    def summary(self) -> str:
        chosen = "" if self.threshold is None else \
            f", membrane threshold {self.threshold:g} by whole-section V_rand"
        if self.adapt_bn:
            chosen += "; prediction adapts its batch norm to the EM (it validated better so)"
        return (f"best checkpoint: {self.best_path} (device {self.device}, "
                f"{self.seconds:.0f} s{chosen})")


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


def affinity_names(offsets) -> list[str]:
    """Channel names of an affinity network, ``affinity_<dz>_<dy>_<dx>`` (usable as folder
    names when prediction writes one folder per channel)."""
    return [f"affinity_{dz}_{dy}_{dx}" for dz, dy, dx in offsets]


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


def _count_classes(ds: Dataset, n_classes: int, max_items: int = 64) -> list[int]:
    counts = np.zeros(n_classes + 1, dtype=np.int64)
    for i in range(min(len(ds), max_items)):
        counts += np.bincount(np.asarray(ds[i][1]).ravel(), minlength=n_classes + 1)[:n_classes + 1]
    return counts[1:].tolist()


@torch.no_grad()
def validate(model: UNet, loader: DataLoader, loss_fn, device: torch.device, amp: bool,
             class_names: list[str], target: str = "classes",
             channels_last: bool = True) -> dict[str, float]:
    """Mean validation loss, pixel error, mean IoU and (membrane maps) mean V_rand / V_info;
    the loss only for affinity networks."""
    model.eval()
    n_classes = len(class_names)
    losses, scores = [], []
    membrane = n_classes == 2 and class_names[-1] == "membrane"
    fmt = memory_format(device, channels_last)
    for x, y in loader:
        x = x.to(device, memory_format=fmt)
        y = y.to(device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        losses.append(float(loss_fn(logits, y)) * len(x))
        if target == "affinities":
            continue
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
    elif cfg.target == "affinities":
        names = affinity_names(cfg.offsets)
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
        "parent": str(cfg.pretrained), "parent_sha256": file_sha256(model_path(cfg.pretrained)),
        "mode": cfg.transfer_mode,
        "leaky_ratio": cfg.leaky_ratio if cfg.transfer_mode == "leaky" else None,
        "frozen_bn": cfg.frozen_bn if frozen_parts(cfg.transfer_mode) else None,
        "new_head": new_head, "parent_classes": list(parent.class_names),
        "data": {"images": cfg.image_dir, "labels": cfg.label_dir},
        "episodic": ({"ratio": cfg.episodic_ratio,
                      "data": cfg.episodic or [type(m).__name__ for m in memory]}
                     if memory else None),
        "parent_epochs": len(parent.history), "parent_lineage": parent.lineage,
    }


def _best_metric(choice: str, validates: bool, on_sections: bool) -> str:
    """The history key that picks the best checkpoint (``auto``: see ``TrainJob``)."""
    if not (validates or on_sections):
        return "train_loss"
    if choice == "auto":
        return "val_section_v_rand" if on_sections else "val_loss"
    if choice == "val_section_v_rand" and not on_sections:
        raise ValueError("best_metric val_section_v_rand needs whole validation sections "
                         "(images larger than a patch, val_sections > 0); use auto")
    return choice


def _improved(value: float | None, best: dict, higher_better: bool) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if "value" not in best:
        return True
    return value > best["value"] if higher_better else value < best["value"]


def train_model(train_ds: Dataset, val_ds: Dataset | None, cfg: TrainJob, *,
                n_classes: int | None = None, memory: Sequence[Dataset] = (),
                sections: Sections | None = None,
                progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> TrainResult:
    """Train a U-Net on ``train_ds``, validating on ``val_ds`` each epoch (see module doc).

    ``memory`` holds earlier data sets (same classes and preprocessing) replayed as a
    ``cfg.episodic_ratio`` share of every batch; ``cfg.episodic``, when set, describes them.
    ``sections``: whole validation sections, predicted and scored every epoch
    (:mod:`membrane_py.train.section_validation`; membrane networks only).
    """
    start = time.perf_counter()
    device = pick_device(cfg.device)
    gen = seed_everything(cfg.seed)
    n_classes = n_classes or getattr(train_ds, "n_classes", None) or cfg.n_classes
    if cfg.target == "affinities":
        n_classes = len(cfg.offsets)
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
    cfg, start_note = cfg.with_pretrained(device.type)
    if start_note:
        report(progress, Event.log(start_note, "train"))
    resumed = load_checkpoint(cfg.resume) if cfg.resume else None
    parent = load_checkpoint(cfg.pretrained) if cfg.pretrained and resumed is None else None
    source = resumed or parent
    sized_by_device = source is None and (cfg.depth is None or cfg.base_filters is None)
    cfg = cfg.with_architecture(device.type, source.model if source is not None else None)
    if sized_by_device:
        report(progress, Event.log(f"network: depth {cfg.depth}, {cfg.base_filters} base filters "
                                   f"(the default on {device.type}; set --depth and "
                                   "--base-filters to change it)", "train"))
    run, notes = resolve_execution(cfg, device)
    for note in notes:
        warn(progress, note, "train")
    cfg = settled(cfg, run)
    class_names = _class_names(cfg, n_classes, source)
    model_cfg = cfg.model_config(n_classes)
    model = build_model(model_cfg)
    lineage = _start_from(model, parent, cfg, memory) if parent is not None else {}
    channels_last = cfg.channels_last and cfg.arch != "unet3d"  # a 4D memory format
    fmt = memory_format(device, channels_last)
    model.to(device, memory_format=fmt)
    forward = torch.compile(model) if run.compile else model
    opt = make_optimizer(parameter_groups(model, cfg.transfer_mode, cfg.lr, cfg.leaky_ratio), cfg)
    base_lrs = [group["lr"] for group in opt.param_groups]
    first_epoch, history, best = 0, [], {}
    if resumed is not None:
        if resumed.model_config != model_cfg:
            raise ValueError(f"cannot resume {cfg.resume}: its architecture {resumed.model} "
                             f"differs from the config's {model_cfg.to_dict()}")
        model.load_state_dict(resumed.state_dict)
        if resumed.optimizer:
            opt.load_state_dict(resumed.optimizer)
        first_epoch, history, best = resumed.epoch, list(resumed.history), dict(resumed.best)
        lineage = resumed.lineage

    weights = cfg.class_weights
    if cfg.loss == "weighted_ce" and weights is None and cfg.target == "classes":
        weights = class_weights_from_counts(_count_classes(train_ds, n_classes)).tolist()
    loss_fn = affinity_bce if cfg.target == "affinities" else make_loss(cfg.loss, weights)
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
    sections = usable_sections(sections, class_names, val_loader is not None, progress)
    metric = _best_metric(cfg.best_metric, val_loader is not None, sections is not None)
    higher_better = BEST_METRICS.get(metric, False)
    desc = device_description(device)
    log = TrainingLog(cfg, n_classes, desc)
    log.note(f"Execution: {run.describe()}")
    report(progress, Event.log(f"execution: {run.describe()}", "train"))
    iters = len(loader)
    total = cfg.epochs * iters
    done = first_epoch * iters
    budget = 60.0 * cfg.minutes if cfg.minutes else None
    schedule = Schedule(cfg.schedule, base_lrs, total, budget, cfg.step_epochs, cfg.step_factor)

    voxel_size = list(cfg.voxel_size or (1.0, 1.0, 1.0))
    if cfg.voxel_size is None:
        warn(progress, "the training images carry no voxel size, so the checkpoint records "
             "1 x 1 x 1 nm; pass --voxel-size X Y Z (nm, VAST's x, y, z order)", "train")

    def snapshot(epoch: int) -> Checkpoint:
        return Checkpoint(
            state_dict=model.state_dict(), model=model_cfg.to_dict(), class_names=class_names,
            preprocess=cfg.preprocess, mip=cfg.mip, voxel_size=voxel_size,
            patch_size=cfg.patch_size, history=history,
            train_config={**cfg.to_dict(), "class_weights": weights}, lineage=lineage,
            epoch=epoch, optimizer=opt.state_dict(), best=best,
            scheduler=schedule.state(done, time.perf_counter() - start),
            threshold=history[-1].get("val_section_threshold") if history else None,
            adapt_bn=bool(history and history[-1].get("val_section_adapt_bn")))

    deadline = start + 60.0 * cfg.minutes if cfg.minutes else math.inf
    completed = first_epoch
    threads_before = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    try:
        for epoch in range(first_epoch, cfg.epochs):
            if epoch > first_epoch and time.perf_counter() >= deadline:
                break  # a run trains at least one iteration, whatever the budget
            train_mode(model, cfg.transfer_mode, cfg.frozen_bn)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            n_iters = 0
            for i, (x, y) in enumerate(prefetched(loader) if run.prefetch else loader):
                check_cancel(cancel)
                now = time.perf_counter()
                if i and now >= deadline:
                    break
                schedule.apply(opt, epoch, epoch * iters + i, now - start)
                x = x.to(device, non_blocking=True, memory_format=fmt)
                y = y.to(device, non_blocking=True)
                with autocast(device, cfg.amp):
                    logits = forward(x)
                loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                n_iters = i + 1
                done = epoch * iters + i + 1
                if (i + 1) % cfg.log_every == 0 or i + 1 == iters:
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(f"loss became {value} at epoch {epoch + 1}, "
                                                 f"iteration {i + 1}; lower the learning rate")
                    its = {"loss": value, "epoch": epoch + 1, "iteration": done,
                           "lr": opt.param_groups[0]["lr"]}
                    log.record("iter", its)
                    report(progress, Event.progress("train", done, total,
                                                    f"epoch {epoch + 1}, loss {value:.4f}"))
                    report(progress, Event.metric("train", done, total, "iteration", **its))
            record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(1, n_iters),
                      "lr": opt.param_groups[0]["lr"]}
            if n_iters < iters:
                record["iterations"] = n_iters
            if val_loader is not None:
                record.update(validate(model, val_loader, loss_fn, device, cfg.amp,
                                        class_names, cfg.target, channels_last))
            if sections is not None:
                scored = best_section_scores(model, sections, cfg.preprocess_config, device,
                                        amp=cfg.amp)
                record.update(scored.record())
                log.note(scored.describe())
                report(progress, Event.log(scored.describe(), "train"))
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            improved = _improved(record.get(metric), best, higher_better)
            if improved:
                best = {"metric": metric, "value": record[metric], "epoch": epoch + 1,
                        "threshold": record.get("val_section_threshold"),
                        "adapt_bn": record.get("val_section_adapt_bn", False)}
            ck = snapshot(epoch + 1)
            save_checkpoint(cfg.last_path, ck)
            completed = epoch + 1
            if improved:
                save_checkpoint(cfg.best_path, ck)
            log.epoch(record)
            report(progress, Event.metric("train", (epoch + 1) * iters, total, "epoch", **record))
            report(progress, Event.artifact(cfg.last_path, "train", "last checkpoint"))
    except (KeyboardInterrupt, Cancelled):
        del history[completed:]  # an epoch recorded but not yet saved is trained again
        save_checkpoint(cfg.last_path, snapshot(completed))
        resume = cfg.resumed()
        write_text_atomic(cfg.resume_job_path, resume.to_json() + "\n")
        message = (f"interrupted in epoch {completed + 1}: saved {cfg.last_path}; resume with: "
                   f"membrane run {cfg.resume_job_path} (or add --resume {cfg.last_path} to "
                   "the same command)")
        log.note(message)
        report(progress, Event.log(message, "train"))
        raise Cancelled(message) from None
    finally:
        torch.set_num_threads(threads_before)
    if time.perf_counter() >= deadline and completed < cfg.epochs:
        cut = history[-1].get("iterations") if history else None
        short = f" (the last after {cut} of {iters} iterations)" if cut is not None else ""
        message = (f"time budget of {cfg.minutes:g} minutes reached after {completed} "
                   f"epoch(s){short}; saved {cfg.last_path}")
        log.note(message)
        report(progress, Event.log(message, "train"))
    if not cfg.best_path.exists():  # resumed after the last epoch, or no finite metric
        save_checkpoint(cfg.best_path, snapshot(completed))
    report(progress, Event.artifact(cfg.best_path, "train", "best checkpoint"))
    return TrainResult(cfg.best_path, cfg.last_path, history, desc, time.perf_counter() - start,
                       best.get("threshold"), bool(best.get("adapt_bn")))


def read_pairs(image_dir: str | Path, label_dir: str | Path, label_format: str = "auto",
               n_classes: int | None = None, max_classes: int = MAX_CLASSES):
    """(paths, uint8 images, class maps, K, format) for image/label files of two folders paired
    by name. A patch folder's manifest.json says its labels are codes and gives K."""
    from membrane_py.augment import labels as L
    from membrane_py.augment.patches import pair_by_name, resolve_label_format

    pairs = pair_by_name(L.list_images(image_dir), L.list_images(label_dir))
    images = []
    for p, _ in pairs:
        im = L.read_image(p)
        if im.dtype != np.uint8 or im.ndim != 2:
            raise ValueError(f"{p}: EM images must be 8-bit grayscale, got {im.dtype} {im.shape}")
        images.append(im)
    raw = [L.decode_label_image(L.read_image(q)) for _, q in pairs]
    label_format, n_classes = resolve_label_format(label_dir, raw, label_format, n_classes,
                                                   max_classes)
    labels, k = L.convert_labels(raw, label_format, n_classes, max_classes)
    return [p for p, _ in pairs], images, labels, k, label_format


def folder_datasets(cfg: TrainJob, image_dir: str, label_dir: str, label_format: str,
                    val_fraction: float, progress: ProgressCallback | None = None,
                    val_dirs: tuple[str, str] | None = None,
                    ) -> tuple[Dataset, Dataset | None, int]:
    """Training and validation datasets from two folders, split by image, or with every
    image training and the validation images and labels from ``val_dirs``. Images of exactly
    ``patch_size`` are used as patches (a patch folder); larger ones are sampled on the fly
    (saturated patches with rotation)."""
    from torch.utils.data import Subset

    from membrane_py.augment.dataset import OnTheFlyPatchDataset, PatchDataset

    if not image_dir or not label_dir:
        raise ValueError("set image_dir and label_dir (folders of images and labels paired by "
                         "name)")
    aug = cfg.augment
    paths, images, labels, k, fmt = read_pairs(image_dir, label_dir, label_format,
                                               cfg.n_classes, cfg.max_classes)
    report(progress, Event.log(f"labels in {label_dir}: {fmt} format, {k} classes, "
                               f"{len(paths)} images", "train"))
    own = ((image_dir, label_dir), images, labels)
    if val_dirs is None:
        train_idx, val_idx = split_by_image(len(images), val_fraction, cfg.seed)
        val_side = own
    else:
        names, more, more_labels, k_val, _ = read_pairs(*val_dirs, fmt, None, cfg.max_classes)
        if k_val > k:
            raise ValueError(f"validation labels {val_dirs[1]} hold class {k_val}, the "
                             f"training labels {label_dir} only {k}: label both with the same "
                             "classes")
        report(progress, Event.log(f"validation images: {val_dirs[0]} ({len(more)})", "train"))
        twins = [p.name for p, v in zip(names, more, strict=True)
                 if any(v.shape == t.shape and np.array_equal(v, t) for t in images)]
        if twins:
            warn(progress, f"validation images {', '.join(twins[:3])} are training images too, "
                 "so validation reads high and chooses the threshold for what the network saw; "
                 "validate on sections that do not train", "train")
        train_idx, val_idx = list(range(len(images))), list(range(len(more)))
        val_side = (val_dirs, more, more_labels)
    pre = cfg.preprocess_config

    def dataset(folders: tuple[str, str], ims: list[np.ndarray], labs: list[np.ndarray],
                idx: list[int], augment, length: int, seed: int, rotate: bool) -> Dataset:
        """The images ``idx`` of ``folders``: a patch folder's patches as they are, larger
        images sampled on the fly."""
        if fmt == "codes" and all(ims[i].shape == (cfg.patch_size,) * 2 for i in idx):
            return Subset(PatchDataset(*folders, pre, augment, cfg.seed, k), idx)
        return OnTheFlyPatchDataset([ims[i] for i in idx], [labs[i] for i in idx],
                                    cfg.patch_size, length, pre, augment, seed, rotate=rotate)

    train = dataset(*own, train_idx, aug, cfg.patches_per_epoch, cfg.seed, True)
    val = dataset(*val_side, val_idx, None, cfg.val_patches, cfg.seed + 1, False) \
        if val_idx else None
    return train, val, k


def build_datasets(cfg: TrainJob, progress: ProgressCallback | None = None,
                   ) -> tuple[Dataset, Dataset | None, list[Dataset], int]:
    """Training, validation and episodic-memory datasets of a job, and its class count K.
    Memory data sets are used whole (no validation split) and must have the same K."""
    train, val, k = folder_datasets(cfg, cfg.image_dir, cfg.label_dir, cfg.label_format,
                                    cfg.val_fraction, progress,
                                    (cfg.val_image_dir, cfg.val_label_dir)
                                    if cfg.val_image_dir else None)
    memory = []
    for e in cfg.episodic:
        old, _, k_old = folder_datasets(cfg, e["images"], e["labels"],
                                        e.get("label_format", cfg.label_format), 0.0, progress)
        if k_old != k:
            raise ValueError(f"episodic data {e['labels']} has {k_old} classes, the new data {k}")
        memory.append(old)
    return train, val, memory, k


def affinity_datasets(cfg: TrainJob) -> tuple[Dataset, Dataset | None]:
    """Affinity training and validation sets from an EM volume (``image_dir``) and an
    instance label volume (``label_dir``), any form :func:`~membrane_py.volumes.open.open_source`
    reads ('file.h5:dataset', TIFF, image folder, zarr). The last ``val_fraction`` of the
    sections validates, the rest trains (a split along z keeps validation honest)."""
    from membrane_py.augment.dataset import AffinityCubeDataset, AffinityPatchDataset
    from membrane_py.augment.labels import read_label_stack
    from membrane_py.geometry import Box
    from membrane_py.volumes.open import open_source

    with open_source(cfg.image_dir) as volume:
        em = volume.read(Box.full(volume.shape_at(cfg.mip)), cfg.mip)
    labels = read_label_stack(cfg.label_dir, None, cfg.mip)
    if em.shape != labels.shape or em.dtype != np.uint8:
        raise ValueError(f"EM {cfg.image_dir} ({em.dtype} {em.shape}) and labels "
                         f"{cfg.label_dir} {labels.shape} must be one shape, EM 8-bit")
    n_val = round(em.shape[0] * cfg.val_fraction)
    cut = em.shape[0] - n_val
    pre = cfg.preprocess_config

    def make(a: int, b: int, length: int, augment: bool, seed: int):
        if cfg.arch == "unet3d":
            return AffinityCubeDataset(em[a:b], labels[a:b], cfg.patch_size, length, pre,
                                       cfg.offsets, augment, seed)
        return AffinityPatchDataset(em[a:b], labels[a:b], cfg.patch_size, length, pre,
                                    cfg.context, cfg.offsets, augment, seed)

    train = make(0, cut, cfg.patches_per_epoch, cfg.augment is not None, cfg.seed)
    return train, (make(cut, em.shape[0], cfg.val_patches, False, cfg.seed + 1)
                   if n_val > 1 else None)


def run_training(cfg: TrainJob, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> TrainResult:
    """The whole job: read and split the data, train, write checkpoints and logs."""
    if cfg.target == "affinities":
        if cfg.episodic or cfg.pretrained not in (None, AUTO_PRETRAINED):
            raise ValueError("affinity training does not take episodic data or a pretrained "
                             "membrane network; leave them empty")
        train, val = affinity_datasets(cfg)
        return train_model(train, val, cfg, progress=progress, cancel=cancel)
    train, val, memory, k = build_datasets(cfg, progress)
    return train_model(train, val, cfg, n_classes=k, memory=memory,
                       sections=whole_sections(val, cfg.val_sections), progress=progress,
                       cancel=cancel)
