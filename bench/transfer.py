"""Transfer learning: FIB-25 -> ISBI 2012 with every fine-tuning mode, over seeds (one JSON).

1. Membrane labels for FIB-25 (training_sample2) through our own ``gt membrane --mapping``
   path (:class:`~membrane_py.augment.groundtruth.GtJob`: fragments -> bodies -> 3 px bands),
   then a U-Net pretrained on sections 0-199. Both are cached under
   ``<tmp>/membrane_bench_cache/transfer`` (keyed by the pretraining settings), so reruns
   skip them; ``--pretrained`` uses a given checkpoint instead.
2. Fine-tune it on ISBI 2012 sections 00-02 in each transfer mode (plus ``freeze_encoder``
   with its batch-norm statistics adapted to ISBI, ``freeze_encoder_adapt_bn``), with
   episodic replay of FIB-25, and train from scratch, all for the same number of
   iterations, once per seed.
3. Score every network on whole ISBI sections 15-19 (the new task) by mean V_rand of the
   watershed segmentation at threshold 0.5 that ``membrane evaluate`` uses, and by pixel
   error; the FIB-25 pixel error on held-back sections 220-244 shows forgetting.

The fine-tuning budget is a fixed iteration count, so that a busy machine changes the time,
not the result. The defaults (a small U-Net: depth 4, 8 base filters, 96^2 patches, batch
8; 150 pretraining and 100 fine-tuning iterations; 1 torch thread) were sized so that the
whole table over three seeds ran in well under an hour on a 2-core machine at load ~25;
``--calibrate`` times 10 continuous iterations (after 2 warm-up ones) and prints
iterations per wall and per CPU minute, from which ``--finetune-iterations`` for a given
CPU budget follows. Runs can go side by side in separate processes (``--seeds``,
``--runs``) and be pooled with ``--merge``.

    python bench/transfer.py                       # 3 seeds, every run
    python bench/transfer.py --seeds 0 --runs freeze_encoder,scratch
    python bench/transfer.py --calibrate
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

from membrane_py.augment.dataset import OnTheFlyPatchDataset
from membrane_py.augment.groundtruth import GtJob, run_gt
from membrane_py.augment.preprocess import preprocess
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.models.unet import UNet
from membrane_py.predict.evaluate import predict_probabilities
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.device import device_description, pick_device
from membrane_py.train.episodic import split_batch
from membrane_py.train.metrics import membrane_scores, pixel_error
from membrane_py.train.trainer import read_pairs, train_model
from membrane_py.train.transfer_modes import TRANSFER_MODES, parameter_groups

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIB, ISBI = DATA / "fib25_sample2", DATA / "isbi2012"
FIB_TRAIN = range(0, 200)
FIB_HELD_BACK = range(220, 250, 6)
ISBI_TRAIN, ISBI_TEST = range(0, 3), range(15, 20)
ADAPT_BN = "freeze_encoder_adapt_bn"
RUNS = (*TRANSFER_MODES, ADAPT_BN, "episodic", "scratch")
#: diagnostic runs, only when named in --runs: freeze_encoder (adapted batch norm) at 3x the
#: learning rate, and last_layer with adapted batch norm
EXTRA = ("freeze_encoder_lr3x", "last_layer_adapt_bn")
CACHE = Path(tempfile.gettempdir()) / "membrane_bench_cache" / "transfer"


def fib25_membranes(cache: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every FIB-25 section and its membrane labels, written once by ``gt membrane
    --mapping groundtruth.h5.gz:transforms --fill-ecs`` into ``cache``."""
    out = cache / "fib25_membranes"
    gz = FIB / "groundtruth.h5.gz"
    if len(list(out.glob("*_border.png"))) != 250:
        run_gt(GtJob(conversion="membrane", input=f"{gz}:stack", output=str(out),
                     fill_ecs=True, mapping=f"{gz}:transforms", images=str(FIB / "grayscale")))
    _, images, labels, _, _ = read_pairs(FIB / "grayscale", out, "auto")
    return images, labels


def isbi(sections: range) -> tuple[list[np.ndarray], list[np.ndarray]]:
    _, images, labels, _, _ = read_pairs(ISBI / "images", ISBI / "labels", "isbi")
    return [images[i] for i in sections], [labels[i] for i in sections]


def scores(ckpt_path: Path, data: tuple[list, list], device: torch.device) -> dict:
    """Mean V_rand (``membrane evaluate``'s watershed, threshold 0.5) and pixel error of a
    checkpoint over whole (images, membrane labels)."""
    ck = load_checkpoint(ckpt_path)
    model = ck.build_model().to(device).eval()
    rows = []
    for image, gt in zip(*data, strict=True):
        prob = predict_probabilities(model, image, ck.preprocess_config, device)
        rows.append((membrane_scores(prob[1], gt)["v_rand"], pixel_error(prob.argmax(0) + 1, gt)))
    v_rand, error = np.mean(rows, axis=0)
    return {"v_rand": float(v_rand), "pixel_error": float(error)}


def bn_shift(ckpt_path: Path, images: list[np.ndarray]) -> list[dict]:
    """How far the data's batch-norm inputs are from the pretrained running statistics, per
    encoder stage (first norm layer of each): mean over channels of |batch mean - running
    mean| / running std, and of batch std / running std (0 and 1 when they match)."""
    ck = load_checkpoint(ckpt_path)
    model = ck.build_model().eval()
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d) and name.split(".")[0] in ("down", "bridge")]
    firsts = {}
    for name, m in layers:
        firsts.setdefault(name.rsplit(".", 1)[0], (name, m))
    seen: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, n=name: seen.__setitem__(n, (inp[0].mean((0, 2, 3)),
                                                            inp[0].std((0, 2, 3)))))
        for name, m in firsts.values()]
    x = torch.from_numpy(np.stack([preprocess(im, ck.preprocess_config)[None]
                                   for im in images]))
    with torch.no_grad():
        model(x[..., :192, :192])
    for h in hooks:
        h.remove()
    rows = []
    for name, m in firsts.values():
        mean, std = seen[name]
        run_std = (m.running_var + m.eps).sqrt()
        rows.append({"layer": name,
                     "mean_shift_in_std": round(float(((mean - m.running_mean).abs()
                                                       / run_std).mean()), 3),
                     "std_ratio": round(float((std / run_std).mean()), 3)})
    return rows


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation, min and max, rounded."""
    a = np.asarray(values, dtype=float)
    return {"mean": round(float(a.mean()), 4),
            "std": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 4),
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4)}


def table_of(per_seed: dict[str, list[dict]]) -> dict:
    """Every run's metrics summarised over its seeds."""
    return {run: {"isbi_v_rand": summary([r["v_rand"] for r in rows]),
                  "isbi_pixel_error": summary([r["pixel_error"] for r in rows]),
                  "fib25_pixel_error": summary([r["fib25_pixel_error"] for r in rows]),
                  "train_seconds": summary([r["train_seconds"] for r in rows]),
                  "cpu_seconds": summary([r.get("cpu_seconds", 0.0) for r in rows]),
                  "v_rand_per_seed": [round(r["v_rand"], 4) for r in rows]}
            for run, rows in per_seed.items()}


def merge(paths: list[str]) -> dict:
    """One report from reports run side by side over different seeds or runs (the same
    pretrained network): the per-run lines of every file pooled (also of a run cut short),
    the pretrained-only row once, the table recomputed."""
    per_seed: dict[str, list[dict]] = {}
    reports = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if "progress" in row:
                per_seed.setdefault(row.pop("progress"), []).append(row)
            elif row.get("bench") == "transfer":
                reports.append(row)
    if not reports:
        raise SystemExit(f"none of {paths} holds a finished report (its settings)")
    out = dict(reports[0])
    out["finetune"]["seeds"] = sorted({r["seed"] for rows in per_seed.values() for r in rows})
    out["load_average_end"] = [rep["load_average_end"] for rep in reports]
    out["finetune_and_eval_seconds"] = [rep["finetune_and_eval_seconds"] for rep in reports]
    out["merged_from"] = {"files": len(paths), "finished": len(reports)}
    per_seed = {"pretrained_only": out["per_seed"]["pretrained_only"], **per_seed}
    return {**out, "per_seed": per_seed, "results": table_of(per_seed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-iterations", type=int, default=150)
    ap.add_argument("--finetune-iterations", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tuning seeds")
    ap.add_argument("--pretrained", default=None, help="use this FIB-25 checkpoint")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)}")
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="pretraining and fine-tuning")
    ap.add_argument("--leaky-ratio", type=float, default=0.1)
    ap.add_argument("--episodic-ratio", type=float, default=0.25)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 wastes least CPU on a busy machine)")
    ap.add_argument("--cache", default=str(CACHE), help="folder for FIB-25 labels and the "
                    "pretrained network")
    ap.add_argument("--pretrain-only", action="store_true",
                    help="only make (or find) the cached pretrained network")
    ap.add_argument("--calibrate", action="store_true",
                    help="only time continuous fine-tuning iterations and exit")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only combine reports run side by side over different --seeds or --runs")
    args = ap.parse_args()
    if args.merge:
        print(json.dumps(merge(args.merge)))
        return
    runs = [run for run in args.runs.split(",") if run]  # none: score the pretrained only
    if unknown := set(runs) - set(RUNS) - set(EXTRA):
        raise SystemExit(f"unknown runs {sorted(unknown)}; choose from {RUNS + EXTRA}")
    seeds = [int(s) for s in args.seeds.split(",")]
    missing = [str(p) for p in (FIB, ISBI) if not p.is_dir()]
    if missing:
        print(json.dumps({"bench": "transfer", "skipped": f"data not found: {missing}"}))
        return
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    work = Path(tempfile.mkdtemp(prefix="transfer_bench_"))
    device = pick_device(args.device)
    base = dict(patch_size=args.patch, batch_size=args.batch, epochs=1, depth=args.depth,
                base_filters=args.base_filters, lr=args.lr, device=args.device, log_every=20)
    pre = TrainJob(out_dir=str(work), **base).preprocess_config

    def patches(data: tuple[list, list], n: int, seed: int) -> OnTheFlyPatchDataset:
        return OnTheFlyPatchDataset(*data, args.patch, n, pre, AugmentConfig(), seed=seed)

    def train(out: Path, name: str, new, memory=(), voxel_size=(50.0, 4.0, 4.0),
              **kw) -> dict:
        cfg = TrainJob(**{**base, **kw}, out_dir=str(out), name=name,
                       voxel_size=list(voxel_size))
        t, c = time.perf_counter(), time.process_time()
        res = train_model(new, None, cfg, n_classes=2, memory=memory)
        return {"train_seconds": round(time.perf_counter() - t, 1),
                "cpu_seconds": round(time.process_time() - c, 1), "checkpoint": res.last_path}

    t0 = time.perf_counter()
    fib_images, fib_labels = fib25_membranes(cache)
    fib_train = ([fib_images[z] for z in FIB_TRAIN], [fib_labels[z] for z in FIB_TRAIN])
    fib_test = ([fib_images[z] for z in FIB_HELD_BACK], [fib_labels[z] for z in FIB_HELD_BACK])
    isbi_train, isbi_test = isbi(ISBI_TRAIN), isbi(ISBI_TEST)
    fib_patches = patches(fib_train, args.pretrain_iterations * args.batch, 0)
    load_seconds = time.perf_counter() - t0

    if args.calibrate:
        wall, cpu = [], []
        for n in (2, 12):
            c = time.process_time()
            wall.append(train(work, f"calibrate{n}", patches(isbi_train, n * args.batch, 1))
                        ["train_seconds"])
            cpu.append(time.process_time() - c)
        print(json.dumps({"bench": "transfer", "calibrate": "iterations per minute of "
                          "continuous-size training (from scratch), 10 timed",
                          "per_wall_minute": round(600 / (wall[1] - wall[0]), 1),
                          "per_cpu_minute": round(600 / (cpu[1] - cpu[0]), 1),
                          "threads": torch.get_num_threads(),
                          "load_average": os.getloadavg()}))
        return

    key = f"d{args.depth}_f{args.base_filters}_p{args.patch}_b{args.batch}_lr{args.lr:g}_" \
          f"it{args.pretrain_iterations}"
    if args.pretrained:
        parent = {"train_seconds": None, "checkpoint": Path(args.pretrained), "cached": False}
    elif (cache / f"fib25_{key}_last.pt").is_file():
        parent = {"train_seconds": None, "checkpoint": cache / f"fib25_{key}_last.pt",
                  "cached": True}
    else:
        parent = {**train(cache, f"fib25_{key}", fib_patches, voxel_size=(10.0, 10.0, 10.0)),
                  "cached": False}
    pretrained = str(parent["checkpoint"])
    if args.pretrain_only:
        print(json.dumps({"bench": "transfer", "pretrain": parent}, default=str))
        return
    n_fresh = split_batch(args.batch, args.episodic_ratio)[0]
    settings = {
        "scratch": {},
        "episodic": {"pretrained": pretrained, "episodic_ratio": args.episodic_ratio},
        ADAPT_BN: {"pretrained": pretrained, "transfer_mode": "freeze_encoder",
                   "frozen_bn": "adapt"},
        "freeze_encoder_lr3x": {"pretrained": pretrained, "transfer_mode": "freeze_encoder",
                                "frozen_bn": "adapt", "lr": 3 * args.lr},
        "last_layer_adapt_bn": {"pretrained": pretrained, "transfer_mode": "last_layer",
                                "frozen_bn": "adapt"},
        **{m: {"pretrained": pretrained, "transfer_mode": m, "leaky_ratio": args.leaky_ratio}
           for m in TRANSFER_MODES},
    }
    model = UNet(depth=args.depth, base_filters=args.base_filters, n_classes=2)
    total = sum(p.numel() for p in model.parameters())
    trainable = {"all": total, **{m: sum(p.numel() for g in parameter_groups(model, m, 1.0)
                                           for p in g["params"]) for m in TRANSFER_MODES}}
    t1 = time.perf_counter()
    per_seed: dict[str, list[dict]] = {"pretrained_only": [
        {**scores(parent["checkpoint"], isbi_test, device),
         "fib25_pixel_error": scores(parent["checkpoint"], fib_test, device)["pixel_error"],
         "train_seconds": 0.0}]}
    for seed in seeds:
        for run in runs:
            kw = {**settings[run], "seed": seed}
            out = work / f"seed{seed}"
            if run == "episodic":  # continuous weights, the same iterations, fewer new patches
                r = train(out, run, patches(isbi_train, args.finetune_iterations * n_fresh,
                                            100 + seed), [fib_patches], **kw)
            else:
                r = train(out, run, patches(isbi_train, args.finetune_iterations * args.batch,
                                            100 + seed), **kw)
            row = {**scores(r["checkpoint"], isbi_test, device),
                   "fib25_pixel_error": scores(r["checkpoint"], fib_test, device)["pixel_error"],
                   "train_seconds": r["train_seconds"], "cpu_seconds": r["cpu_seconds"],
                   "seed": seed}
            per_seed.setdefault(run, []).append(row)
            print(json.dumps({"progress": run, **row}), flush=True)
    print(json.dumps({
        "bench": "transfer", "device": device_description(device),
        "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg(),
        "pretrain": {"data": "fib25_sample2 z 0-199, gt membrane --mapping transforms "
                             "--fill-ecs (3 px)",
                     "iterations": None if args.pretrained else args.pretrain_iterations,
                     "train_seconds": parent["train_seconds"],
                     "cpu_seconds": parent.get("cpu_seconds"), "cached": parent["cached"],
                     "checkpoint": pretrained},
        "finetune": {"data": "isbi2012 00-02", "iterations": args.finetune_iterations,
                     "seeds": seeds, "leaky_ratio": args.leaky_ratio,
                     "episodic_ratio": args.episodic_ratio,
                     "episodic_memory": "the FIB-25 pretraining patches"},
        "evaluation": {"new_task": "isbi2012 15-19, whole 512x512 sections",
                       "old_task": f"fib25_sample2 z {FIB_HELD_BACK[0]}-{FIB_HELD_BACK[-1]} "
                                   f"step {FIB_HELD_BACK.step}",
                       "metrics": "V_rand of the watershed at threshold 0.5 (membrane "
                                  "evaluate), pixel error; mean/std/min/max over seeds"},
        "model": {"depth": args.depth, "base_filters": args.base_filters, "patch": args.patch,
                  "batch": args.batch, "lr": args.lr, "optimizer": "adam"},
        "trainable_parameters": trainable,
        "bn_shift_of_pretrained_encoder": {
            "isbi2012 00-02": bn_shift(parent["checkpoint"], isbi_train[0]),
            "fib25 held back": bn_shift(parent["checkpoint"], fib_test[0])},
        "per_seed": per_seed, "results": table_of(per_seed), "load_seconds": round(load_seconds, 1),
        "finetune_and_eval_seconds": round(time.perf_counter() - t1, 1),
    }, default=str))


if __name__ == "__main__":
    main()
