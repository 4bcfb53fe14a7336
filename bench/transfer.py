"""Transfer learning: FIB-25 -> ISBI 2012 with every fine-tuning mode (one JSON object).

1. Pretrain a U-Net on membranes derived from FIB-25 (training_sample2) neuron ground truth,
   every second section of z 0-199 (or load ``--pretrained``).
2. Fine-tune it on ISBI 2012 sections 00-02 in each transfer mode for the same number of
   iterations, and train a network from scratch with that budget.
3. Score every network (and the pretrained one unchanged) by V_rand and pixel error on ISBI
   sections 15-19 (the new task) and on held-back FIB-25 sections 220-244 (forgetting of the
   old task).

Reads ../shared/data/{fib25_sample2,isbi2012}; prints ``{"skipped": ...}`` when they are
absent. Iteration budgets keep the comparison fair on a busy machine; the defaults took
16 minutes on a 2-core CPU shared with three other jobs (``--threads 1``):

    python bench/transfer.py --pretrain-iterations 600 --finetune-iterations 120
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from membrane_py.augment import labels as L
from membrane_py.augment.dataset import OnTheFlyPatchDataset
from membrane_py.augment.labels import convert_labels
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.predict.evaluate import predict_probabilities
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.device import device_description, pick_device
from membrane_py.train.episodic import split_batch
from membrane_py.train.metrics import membrane_scores, pixel_error
from membrane_py.train.trainer import train_model
from membrane_py.train.transfer_modes import TRANSFER_MODES
from membrane_py.volumes.hdf5 import gunzip_cached

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIB, ISBI = DATA / "fib25_sample2", DATA / "isbi2012"
FIB_TRAIN = range(0, 200, 2)
FIB_HELD_BACK = range(220, 250, 6)
ISBI_TRAIN, ISBI_TEST = range(0, 3), range(15, 20)
RUNS = (*TRANSFER_MODES, "episodic", "scratch")


def load_fib25(sections: range) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FIB-25 EM sections and membrane labels (fragment ids -> bodies -> 3 px membranes)."""
    with h5py.File(gunzip_cached(FIB / "groundtruth.h5.gz"), "r") as f:
        stack, transforms = f["stack"][:], f["transforms"][:]
    lut = np.zeros(max(int(transforms[:, 0].max()), int(stack.max())) + 1, np.int64)
    lut[transforms[:, 0]] = transforms[:, 1]
    labels = [L.instances_to_membrane(lut[stack[z]], fill_ecs=True) for z in sections]
    images = [L.read_image(FIB / "grayscale" / f"iso.{2600 + z}.png") for z in sections]
    return images, labels


def load_isbi(sections: range) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [L.read_image(ISBI / "images" / f"{i:02d}.png") for i in sections]
    raw = [L.decode_label_image(L.read_image(ISBI / "labels" / f"{i:02d}.png"))
           for i in sections]
    return images, convert_labels(raw, "isbi")[0]


def scores(ckpt_path: Path, data: tuple[list, list], device: torch.device) -> dict:
    """Mean V_rand and pixel error of a checkpoint over (images, membrane labels)."""
    ck = load_checkpoint(ckpt_path)
    model = ck.build_model().to(device)
    rows = []
    for image, gt in zip(*data, strict=True):
        prob = predict_probabilities(model, image, ck.preprocess_config, device)
        rows.append((membrane_scores(prob[1], gt)["v_rand"], pixel_error(prob.argmax(0) + 1, gt)))
    v_rand, error = np.mean(rows, axis=0)
    return {"v_rand": round(float(v_rand), 4), "pixel_error": round(float(error), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-iterations", type=int, default=600)
    ap.add_argument("--finetune-iterations", type=int, default=120)
    ap.add_argument("--pretrained", default=None, help="reuse this FIB-25 checkpoint")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)}")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="pretraining and fine-tuning")
    ap.add_argument("--leaky-ratio", type=float, default=0.1)
    ap.add_argument("--episodic-ratio", type=float, default=0.25)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="folder for checkpoints (default: temporary)")
    args = ap.parse_args()
    runs = args.runs.split(",")
    if unknown := set(runs) - set(RUNS):
        raise SystemExit(f"unknown runs {sorted(unknown)}; choose from {RUNS}")
    missing = [str(p) for p in (FIB, ISBI) if not p.is_dir()]
    if missing:
        print(json.dumps({"bench": "transfer", "skipped": f"data not found: {missing}"}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="transfer_bench_"))
    device = pick_device(args.device)
    base = dict(out_dir=str(out), patch_size=args.patch, batch_size=args.batch, epochs=1,
                depth=args.depth, base_filters=args.base_filters, lr=args.lr, device=args.device,
                log_every=20)
    pre = TrainJob(**base).preprocess_config

    def patches(data: tuple[list, list], n: int, seed: int) -> OnTheFlyPatchDataset:
        return OnTheFlyPatchDataset(*data, args.patch, n, pre, AugmentConfig(), seed=seed)

    t0 = time.perf_counter()
    fib_train, fib_test = load_fib25(FIB_TRAIN), load_fib25(FIB_HELD_BACK)
    isbi_train, isbi_test = load_isbi(ISBI_TRAIN), load_isbi(ISBI_TEST)
    fib_patches = patches(fib_train, args.pretrain_iterations * args.batch, 0)
    load_seconds = time.perf_counter() - t0

    def train(name: str, new, memory=(), voxel_size=(50.0, 4.0, 4.0), **kw) -> dict:
        cfg = TrainJob(**base, name=name, voxel_size=list(voxel_size), **kw)
        t = time.perf_counter()
        res = train_model(new, None, cfg, n_classes=2, memory=memory)
        return {"train_seconds": round(time.perf_counter() - t, 1), "checkpoint": res.last_path}

    if args.pretrained:
        parent = {"train_seconds": None, "checkpoint": Path(args.pretrained)}
    else:
        parent = train("fib25", fib_patches, voxel_size=(10.0, 10.0, 10.0))
    n_new = args.finetune_iterations * args.batch
    n_fresh = split_batch(args.batch, args.episodic_ratio)[0]
    settings = {
        "scratch": {},
        "episodic": {"pretrained": str(parent["checkpoint"]),
                     "episodic_ratio": args.episodic_ratio},
        **{m: {"pretrained": str(parent["checkpoint"]), "transfer_mode": m,
               "leaky_ratio": args.leaky_ratio} for m in TRANSFER_MODES},
    }
    results = {"pretrained_only": {"train_seconds": 0.0, "checkpoint": parent["checkpoint"]}}
    for run in runs:
        if run == "episodic":  # continuous weights, the same iterations with fewer new patches
            results[run] = train(run, patches(isbi_train, args.finetune_iterations * n_fresh, 1),
                                 [fib_patches], **settings[run])
        else:
            results[run] = train(run, patches(isbi_train, n_new, 1), **settings[run])
    t1 = time.perf_counter()
    table = {}
    for run, r in results.items():
        isbi, fib = (scores(r["checkpoint"], d, device) for d in (isbi_test, fib_test))
        table[run] = {**{f"isbi_{k}": v for k, v in isbi.items()},
                      **{f"fib25_{k}": v for k, v in fib.items()},
                      "train_seconds": r["train_seconds"]}
    print(json.dumps({
        "bench": "transfer", "device": device_description(device),
        "torch_threads": torch.get_num_threads(),
        "pretrain": {"data": "fib25_sample2 z 0-198 step 2, membranes from instances (3 px)",
                     "iterations": None if args.pretrained else args.pretrain_iterations,
                     "train_seconds": parent["train_seconds"],
                     "checkpoint": str(parent["checkpoint"])},
        "finetune": {"data": "isbi2012 00-02", "iterations": args.finetune_iterations,
                     "leaky_ratio": args.leaky_ratio, "episodic_ratio": args.episodic_ratio,
                     "episodic_memory": "the FIB-25 pretraining patches"},
        "evaluation": {"new_task": "isbi2012 15-19",
                       "old_task": f"fib25_sample2 z {FIB_HELD_BACK[0]}-{FIB_HELD_BACK[-1]} "
                                   f"step {FIB_HELD_BACK.step}",
                       "metrics": "mean V_rand (1 = perfect), mean pixel error (0 = perfect)"},
        "model": {"depth": args.depth, "base_filters": args.base_filters, "patch": args.patch,
                  "batch": args.batch, "lr": args.lr, "optimizer": "adam"},
        "results": table, "load_seconds": round(load_seconds, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
    }, default=str))


if __name__ == "__main__":
    main()
