"""ISBI 2012 accuracy: train on sections 00-14, score sections 15-19 (one JSON object).

A table over loss x architecture x augmentation x learning-rate schedule, each scored with
and without test-time augmentation. Every cell trains the same
fixed number of iterations (a budget in iterations, not minutes, so the table does not
depend on how busy the machine is) with the CPU defaults of ``membrane train`` otherwise
(depth 4, 16 filters, 256^2 patches, batch 8, Adam 1e-3). Validation runs on the whole
sections 15-19 after every epoch (:mod:`membrane_py.train.section_validation`), which picks
the best checkpoint, its membrane threshold and whether prediction adapts its batch norm to
the EM (validation scores both ways, ``section_v_rand_plain`` / ``_adapted``); each cell is
scored on sections 15-19 with ``membrane evaluate``'s watershed and V_rand at the
checkpoint's own threshold and way, without test-time augmentation (that is the best epoch's
whole-section validation score: the same engine, sections and threshold) and with each
further ``--tta``. Next to it the last epoch's
patch V_rand (what validation reported before whole sections), to show how far patches
flatter a network. Cells run in the order given (losses outer, architectures inner) until
``--max-minutes`` is spent; cells that no longer fit are listed as skipped.

    python bench/accuracy_isbi.py --iterations 850   # about 10 minutes per cell, quiet CPU

``--minutes M`` trains each cell for M minutes instead, with ``membrane train``'s own
defaults (10 epochs of 1024 patches, the run stopping when the budget is spent), and
``--pretrained auto`` starts from the starter model as ``membrane train`` does by default
(the starter saw ISBI 00-14 and FIB-25, never sections 15-19): together they measure what a
user gets from the defaults in M minutes of this machine (meaningful on a quiet machine)::

    python bench/accuracy_isbi.py --minutes 10 --pretrained auto --losses weighted_ce --archs unet
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from membrane_py.augment import labels as L
from membrane_py.augment.dataset import OnTheFlyPatchDataset
from membrane_py.augment.labels import convert_labels
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.infer.batchnorm import ADAPT_PATCHES, crops, settle_adapt_bn
from membrane_py.infer.engine import load_predictor
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.device import device_description, pick_device
from membrane_py.train.metrics import membrane_scores
from membrane_py.train.section_validation import Sections
from membrane_py.train.trainer import train_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
#: iterations of batch 8 that 10 minutes of a quiet 2-core CPU train with depth 4 / 16
#: filters: about 300 in fp32 (2026-11-23), 812-887 with bf16 autocast and channels-last,
#: the defaults since (``--minutes 10``, 2026-12-01)
QUIET_10_MINUTES = 850


def load(sections: range) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [L.read_image(DATA / "images" / f"{i:02d}.png") for i in sections]
    raw = [L.decode_label_image(L.read_image(DATA / "labels" / f"{i:02d}.png")) for i in sections]
    return images, convert_labels(raw, "isbi")[0]


def score(checkpoint: Path, images, labels, tta: int, threshold: float) -> float:
    """Mean V_rand over the sections at ``threshold`` (fp32), the batch norm adapted to crops
    of the sections when the checkpoint asks for it (as predict and evaluate by default)."""
    adapt = settle_adapt_bn(None, checkpoint)
    predictor = load_predictor(checkpoint, precision="fp32", tta=tta,
                               adapt_bn=(lambda: crops(images, ADAPT_PATCHES)) if adapt else None)
    return float(np.mean([membrane_scores(predictor.predict(im[None])[0, 1], gt,
                                          threshold)["v_rand"]
                          for im, gt in zip(images, labels, strict=True)]))


#: ``--augments`` choices: the augmentation of the training patches
AUGMENTS = {"flips": AugmentConfig(), "all": AugmentConfig.all_on()}


def run_cell(args, loss: str, arch: str, augment: str, schedule: str, data, out: Path) -> dict:
    train_im, train_lab, val_im, val_lab = data
    per_epoch = args.iterations // args.epochs
    budget = (dict(epochs=TrainJob.epochs, patches_per_epoch=TrainJob.patches_per_epoch,
                   minutes=args.minutes) if args.minutes else
              dict(epochs=args.epochs, patches_per_epoch=per_epoch * args.batch))
    pretrained = None if args.pretrained == "none" else args.pretrained
    cfg = TrainJob(out_dir=str(out), name=f"{loss}_{arch}_{augment}_{schedule}",
                   patch_size=args.patch, schedule=schedule,
                   batch_size=args.batch, depth=args.depth, base_filters=args.base_filters,
                   lr=args.lr, loss=loss, arch=arch, device=args.device,
                   voxel_size=[50.0, 4.0, 4.0], log_every=5, val_patches=args.val_patches,
                   pretrained=pretrained, augment=AUGMENTS[augment], **budget)
    per_epoch = cfg.patches_per_epoch // args.batch
    pre = cfg.preprocess_config
    train_ds = OnTheFlyPatchDataset(train_im, train_lab, args.patch, cfg.patches_per_epoch,
                                    pre, cfg.augment, seed=0)
    val_ds = OnTheFlyPatchDataset(val_im, val_lab, args.patch, cfg.val_patches, pre, None,
                                  seed=1, rotate=False)
    t0 = time.perf_counter()
    res = train_model(train_ds, val_ds, cfg, n_classes=2,
                      sections=Sections(val_im, val_lab))
    train_seconds = time.perf_counter() - t0
    ck = load_checkpoint(res.best_path)
    best = res.history[ck.epoch - 1]
    last = res.history[-1]
    iterations = int(sum(h.get("iterations", per_epoch) for h in res.history))
    cell = {
        "loss": loss, "arch": arch, "augment": augment, "schedule": schedule,
        "iterations": iterations,
        "started_from": ck.lineage.get("parent") or "scratch",
        "lr": ck.train_config["lr"], "epochs": len(res.history), "best_epoch": ck.epoch,
        "threshold": ck.threshold,
        "section_v_rand_validation": round(best["val_section_v_rand"], 4),
        "patch_v_rand_last_epoch": round(last["val_v_rand"], 4),
        "section_v_rand_last_epoch": round(last["val_section_v_rand"], 4),
        "section_validation_seconds": round(float(np.mean(
            [h["val_section_seconds"] for h in res.history])), 1),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_iteration": round(float(np.sum([h["seconds"] for h in res.history])
                                             - np.sum([h["val_section_seconds"]
                                                       for h in res.history]))
                                       / iterations, 2),
    }
    cell["v_rand_tta1"] = cell["section_v_rand_validation"]
    cell["adapt_bn"] = ck.adapt_bn
    for way in ("plain", "adapted"):
        cell[f"section_v_rand_{way}"] = round(best[f"val_section_v_rand_{way}"], 4)
    for tta in (t for t in args.tta if t > 1):
        t1 = time.perf_counter()
        cell[f"v_rand_tta{tta}"] = round(score(res.best_path, val_im, val_lab, tta,
                                               ck.threshold), 4)
        cell[f"eval_seconds_tta{tta}"] = round(time.perf_counter() - t1, 1)
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=40,
                    help=f"training iterations per cell ({QUIET_10_MINUTES}: about 10 minutes "
                    "of a quiet 2-core CPU)")
    ap.add_argument("--epochs", type=int, default=2, help="validations per cell")
    ap.add_argument("--minutes", type=float, default=None,
                    help="train each cell for this many minutes with membrane train's epochs "
                    "and patches per epoch (in place of --iterations / --epochs)")
    ap.add_argument("--pretrained", default="none",
                    help="none (from scratch), auto (the starter model when it fits, as "
                    "membrane train) or a checkpoint")
    ap.add_argument("--val-patches", type=int, default=16)
    ap.add_argument("--max-minutes", type=float, default=25.0,
                    help="start no further cell after this (a started cell finishes)")
    ap.add_argument("--losses", default="weighted_ce,ce")
    ap.add_argument("--archs", default="unet,resunet")
    ap.add_argument("--tta", default="1,8")
    ap.add_argument("--augments", default="flips",
                    help="training augmentations to compare: flips (flips and rot90) and/or "
                    "all (every augmentation, AugmentConfig.all_on)")
    ap.add_argument("--schedules", default=TrainJob.schedule,
                    help="learning-rate schedules to compare (none, step, cosine)")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for checkpoints (default: temporary)")
    args = ap.parse_args()
    args.tta = [int(t) for t in args.tta.split(",")]
    if not DATA.is_dir():
        raise SystemExit(f"ISBI 2012 data not found at {DATA}")
    if args.iterations < args.epochs:
        raise SystemExit("--iterations must be at least --epochs")
    torch.set_num_threads(args.threads)
    data = (*load(range(0, 15)), *load(range(15, 20)))
    out = Path(args.out or tempfile.mkdtemp(prefix="isbi_bench_"))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    table, skipped = [], []
    cells = [(loss, arch, aug, sched) for loss in args.losses.split(",")
             for arch in args.archs.split(",") for aug in args.augments.split(",")
             for sched in args.schedules.split(",")]
    for loss, arch, aug, sched in cells:
        if time.perf_counter() - t0 > 60 * args.max_minutes:
            skipped.append({"loss": loss, "arch": arch, "augment": aug, "schedule": sched})
        else:
            table.append(run_cell(args, loss, arch, aug, sched, data, out))
    default = table[0]
    print(json.dumps({
        "bench": "accuracy_isbi", "train_sections": "00-14", "validation_sections": "15-19",
        "run": {"loss": default["loss"], "arch": default["arch"], "augment": default["augment"],
                "patch_v_rand": default["patch_v_rand_last_epoch"],
                "section_v_rand": default["section_v_rand_last_epoch"]},
        "table": table, "skipped_by_time": skipped,
        "scoring": "v_rand_ttaN: mean V_rand over sections 15-19 of the best checkpoint "
                   "(chosen by whole-section V_rand), predicted whole with N flips/rotations, "
                   "threshold = the checkpoint's own (membrane_scores: pixels below are "
                   "seeds, grown back by watershed, as membrane evaluate)",
        "iterations_per_cell": None if args.minutes else args.iterations,
        "minutes_per_cell": args.minutes, "pretrained": args.pretrained,
        "quiet_10_minute_iterations": QUIET_10_MINUTES,
        "model": {"depth": args.depth, "base_filters": args.base_filters}, "patch": args.patch,
        "batch": args.batch, "lr": args.lr, "device": device_description(pick_device(args.device)),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - t0, 1), "checkpoints": str(out),
    }))


if __name__ == "__main__":
    main()
