"""Neurons in 3D on FIB-25 within a training budget, next to the published FFN result.

Data: ``../shared/data/fib25_sample2`` (250^3 FIB-SEM, 10 nm isotropic; ground-truth
fragments mapped to bodies by ``transforms``). Protocol:

1. The networks of ``--networks`` train on sections 0-149: a 2D membrane U-Net (labels:
   3-px bands between bodies, as `gt membrane` draws them, plus any id 0) and a 2.5D
   affinity U-Net (``--context`` neighbouring sections on each side as input channels;
   z, y, x affinities as targets, plus ``(3, 0, 0), (0, 9, 0), (0, 0, 9)`` with
   ``--long-range``). The budget is either ``--iterations N`` each (batch 8 of 128^2,
   fresh patches, cosine learning rate; ``--calibrate`` measures the CPU seconds of one
   iteration, so N can stand for "20 CPU minutes" on a machine that is not quiet) or
   ``--minutes`` of wall clock split between them (the trainer is cancelled then and its
   last weights are used; 64 fixed patches per epoch, as the first runs did).
2. Every network predicts sections 97-249 through the tiled engine
   (:func:`membrane_py.infer.engine.load_predictor`); predictions are cached next to the
   checkpoints, and a finished ``--iterations`` run in ``--work`` is reused.
3. Every method segments the tuning block (sections 100-149, ``--tune 50``; training
   sections, fewer than 150 to keep the sweep short on a CPU) and the test block 150-249
   (``--test 100``) separately. Its parameter (the merge threshold, or ``h`` for the
   h-minima watersheds, the bias for the mutex watershed) is chosen by adapted Rand error
   on the tuning block only; the row reports that choice scored on the test block.
   Smaller ``--test`` is for quick checks.
4. The published FFN segmentation is scored on 150-249 (and on all 250 sections, to check
   the README's 0.157) by the same code.

Scores (:func:`membrane_py.train.metrics.rand_info_scores`, scikit-image underneath) count
voxels where the ground truth is > 0. Our segmentations are first grown over their 0 voxels
(membranes, removed small objects) with :func:`~membrane_py.segment.grow_into_membranes`;
FFN's is scored as published (its 0 = unlabelled counts as one id, as in the README).
The JSON also times connected-components-3d / fastremap / edt against the scipy /
numpy / scikit-image calls they replace.

    python bench/neurons3d.py --calibrate
    python bench/neurons3d.py --iterations 480 --networks affinity --context 2 --long-range
    python bench/neurons3d.py [--minutes 20] [--tune 50] [--test 100] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAIN = slice(0, 150)
KEYS = ("adapted_rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge")
WATERZ_THRESHOLDS = [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8]
H_VALUES = [0.05, 0.1, 0.2]
MUTEX_BIASES = [0.2, 0.35, 0.5, 0.65]
LONG_RANGE = ((3, 0, 0), (0, 9, 0), (0, 0, 9))
NEAREST_OFFSETS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def log(message: str) -> None:
    """Stage notes on stderr (stdout carries the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> tuple[np.ndarray, np.ndarray]:
    """EM (250, 250, 250) uint8 and body ids int64 (fragments mapped by ``transforms``)."""
    import h5py

    from membrane_py.augment.labels import apply_mapping
    from membrane_py.geometry import Box
    from membrane_py.volumes.hdf5 import gunzip_cached
    from membrane_py.volumes.open import open_source

    folder = DATA / "fib25_sample2"
    with open_source(folder / "grayscale") as volume:
        em = volume.read(Box.full(volume.shape), 0)
    with h5py.File(gunzip_cached(folder / "groundtruth.h5.gz")) as f:
        bodies = apply_mapping(f["stack"][()], f["transforms"][()])
    return em, bodies


def train(kind: str, em: np.ndarray, gt: np.ndarray, work: Path, device: str, *,
          seconds: float | None = None, iterations: int | None = None, context: int = 1,
          offsets=NEAREST_OFFSETS) -> tuple[Path, dict]:
    """Train a ``membrane`` or ``affinity`` network on sections 0-149, for ``seconds`` (the
    trainer is cancelled then; 64 fixed patches per epoch) or for exactly ``iterations`` of
    batch 8 (fresh patches: 8 epochs of ``iterations`` patches, cosine learning rate). A
    finished run of the same length in ``work`` is reused."""
    from membrane_py.augment.dataset import AffinityPatchDataset, OnTheFlyPatchDataset
    from membrane_py.augment.labels import instances_to_membrane
    from membrane_py.augment.preprocess import PreprocessConfig
    from membrane_py.augment.transforms import AugmentConfig
    from membrane_py.events import Cancelled, CancelToken
    from membrane_py.train.checkpoint import load_checkpoint
    from membrane_py.train.config import TrainJob
    from membrane_py.train.trainer import train_model

    pre = PreprocessConfig()
    epochs, patches = (100000, 64) if iterations is None else (8, iterations)
    common = {"out_dir": str(work), "name": kind, "patch_size": 128,
              "patches_per_epoch": patches, "depth": 4, "base_filters": 16, "epochs": epochs,
              "batch_size": 8, "device": device, "preprocess": pre.to_dict(),
              "voxel_size": [10.0, 10.0, 10.0], "log_every": 8,
              "schedule": "none" if iterations is None else "cosine"}
    if kind == "membrane":
        cfg = TrainJob(**common, n_classes=2)
        labels = [instances_to_membrane(s, thickness=3, fill_ecs=True) for s in gt[TRAIN]]
        ds = OnTheFlyPatchDataset(list(em[TRAIN]), labels, 128, patches, pre, AugmentConfig(),
                                  seed=0)
    else:
        cfg = TrainJob(**common, target="affinities", context=context,
                       offsets=[list(d) for d in offsets])
        ds = AffinityPatchDataset(em[TRAIN], gt[TRAIN], 128, patches, pre, context=context,
                                  offsets=offsets, seed=0)
    if iterations is not None and cfg.last_path.is_file() and \
            load_checkpoint(cfg.last_path).epoch == epochs:
        log(f"reusing {cfg.last_path}")
    else:
        cancel = CancelToken()
        timer = threading.Timer(seconds, cancel.cancel) if seconds else None
        if timer:
            timer.start()
        t0 = time.perf_counter()
        try:
            train_model(ds, None, cfg, cancel=cancel)
        except Cancelled:
            pass
        finally:
            if timer:
                timer.cancel()
        log(f"trained {kind} in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()}")
    ck = load_checkpoint(cfg.last_path)
    return cfg.last_path, {"iterations": ck.epoch * (patches // 8),
                           "patches_per_epoch": patches, "epochs": ck.epoch,
                           "context": context if kind != "membrane" else 0,
                           "offsets": [list(d) for d in offsets] if kind != "membrane" else None,
                           "first_train_loss": ck.history[0]["train_loss"] if ck.history
                           else None,
                           "last_train_loss": ck.history[-1]["train_loss"] if ck.history
                           else None}


def predict(model: Path, em: np.ndarray, first: int, device: str) -> tuple[np.ndarray, float]:
    """(C, z, y, x) probabilities of a checkpoint for sections ``first - 3 ..`` (0 before;
    cached next to the checkpoint), and seconds. Each section is one tile (margin 8: the
    sections are whole, so the margin only reflects the volume's border)."""
    from membrane_py.infer.engine import load_predictor

    t0 = time.perf_counter()
    start = max(first - 3, 0)
    cache = model.with_name(f"{model.stem}.prediction_{start}_{len(em)}.npy")
    if cache.is_file() and cache.stat().st_mtime > model.stat().st_mtime:
        part = np.load(cache)
    else:
        part = load_predictor(model, device=device, tile=256, margin=8).predict(em[start:])
        np.save(cache, part)
    out = np.zeros((part.shape[1], *em.shape), np.float32)
    out[:, start:] = part.transpose(1, 0, 2, 3)
    return out, time.perf_counter() - t0


def score(seg: np.ndarray, gt: np.ndarray, boundary: np.ndarray | None) -> dict:
    from membrane_py.segment import grow_into_membranes
    from membrane_py.train.metrics import rand_info_scores

    if boundary is not None and (seg == 0).any():
        seg = grow_into_membranes(seg, boundary)
    s = rand_info_scores(seg, gt)
    return {k: round(s[k], 4) for k in KEYS}


def sweep(name: str, network: str, param: str, values, segment, gt: np.ndarray,
          boundary: np.ndarray, tune: slice, test: slice) -> dict:
    """Choose ``param`` on sections 50-149 by adapted Rand error; score it on 150-249.
    ``segment(block, values)`` yields one segmentation per value for a block slice."""
    log(f"{name} on the {network} network: sweeping {param}")
    t0 = time.perf_counter()
    tuning = [score(seg, gt[tune], boundary[tune])["adapted_rand_error"]
              for seg in segment(tune, values)]
    best = values[int(np.argmin(tuning))]
    t1 = time.perf_counter()
    (seg,) = list(segment(test, [best]))
    seconds = time.perf_counter() - t1
    row = {"method": name, "network": network, param: best,
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "load_average_1min": round(os.getloadavg()[0], 1),
           "tuning_error": round(min(tuning), 4), **score(seg, gt[test], boundary[test]),
           "objects": int(len(np.unique(seg)) - (1 if (seg == 0).any() else 0)),
           "segment_seconds_test": round(seconds, 1),
           "sweep_seconds": round(t1 - t0, 1)}
    log(json.dumps(row))
    return row


def methods(nets: dict[str, tuple[np.ndarray, list | None]], gt: np.ndarray, tune: slice,
            test: slice) -> list[dict]:
    """Rows for every network (label -> (membrane map (z, y, x), None) or (affinities
    (C, z, y, x), offsets)) and every method that applies to it."""
    from membrane_py.segment import (
        AgglomerationKnobs,
        InstanceConfig,
        agglomerate,
        agglomerate_affinities,
        boundary_affinities,
        mutex_watershed,
        segment_stack,
        watershed_3d,
    )

    rows = []
    for network, (pred, offsets) in nets.items():
        boundary = pred if offsets is None else 1.0 - pred[:3].mean(axis=0)
        if offsets is None:
            rows.append(sweep("3D h-minima watershed (--mode watershed3d)", network, "h",
                              [0.05, 0.2], lambda b, vs, p=pred: (
                                  watershed_3d(p[b], InstanceConfig(h=v), 500) for v in vs),
                              gt, pred, tune, test))
            variants = [(boundary_affinities(pred), AgglomerationKnobs(),
                         "waterz mean, distance seeds")]
        else:
            variants = [
                (pred, AgglomerationKnobs(), "waterz mean, distance seeds"),
                (pred, AgglomerationKnobs(scoring="quantile", quantile=50),
                 "waterz median, distance seeds"),
                (pred, AgglomerationKnobs(scoring="quantile", quantile=75),
                 "waterz 75th percentile, distance seeds"),
                (pred, AgglomerationKnobs(boundary=0.3, seed_distance=1.0),
                 "waterz mean, seeds on thinned boundaries (affinity < 0.3, distance >= 1)"),
                (pred, AgglomerationKnobs(min_size=1000),
                 "waterz mean, distance seeds, objects under 1000 voxels removed"),
            ]
        for a, knobs, name in variants:
            rows.append(sweep(f"affinity agglomeration ({name})", network, "threshold",
                              WATERZ_THRESHOLDS, lambda b, vs, a=a, k=knobs:
                              agglomerate_affinities(a[:, b], vs, k), gt, boundary, tune, test))
        if offsets is not None:
            name = "mutex watershed (mwatershed), all offsets" if len(offsets) > 3 else \
                "mutex watershed (mwatershed), nearest neighbours only"
            rows.append(sweep(name, network, "bias", MUTEX_BIASES,
                              lambda b, vs, a=pred, o=offsets: (
                                  mutex_watershed(a[:, b], o, bias=v, long_range_stride=2)
                                  for v in vs), gt, boundary, tune, test))
        rows.append(sweep("2D h-minima watershed, linked across sections (--mode 3d)", network,
                          "h", H_VALUES if offsets is None else [0.05, 0.2],
                          lambda b, vs, p=boundary: (
                              agglomerate(segment_stack(p[b], InstanceConfig(h=v)))
                              for v in vs), gt, boundary, tune, test))
    return rows


def ffn(gt: np.ndarray, test: slice) -> list[dict]:
    path = DATA / "ffn_fib25_model" / "sample-training2.npz"
    if not path.is_file():
        return [{"method": "FFN (published)", "skipped": f"{path} not found"}]
    seg = np.load(path)["segmentation"]
    return [{"method": "FFN (published segmentation, Januszewski et al. 2018)",
             "sections": f"{test.start}-{test.stop - 1}", **score(seg[test], gt[test], None)},
            {"method": "FFN (published segmentation, Januszewski et al. 2018)",
             "sections": "0-249", **score(seg, gt, None)}]


def libraries(gt: np.ndarray) -> dict:
    """Seconds of cc3d / fastremap / edt against the scipy / numpy / scikit-image calls."""
    import cc3d
    import edt
    import fastremap
    from scipy import ndimage as ndi
    from skimage.measure import label

    vol = np.ascontiguousarray(gt[TRAIN] > 0)
    ids = np.ascontiguousarray(gt[TRAIN] * 7919)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return round(time.perf_counter() - t0, 3)

    return {
        "shape_zyx": list(vol.shape),
        "connected_components_6": {"cc3d": timed(lambda: cc3d.connected_components(
            vol, connectivity=6)), "skimage.measure.label": timed(lambda: label(
                vol, connectivity=1))},
        "renumber": {"fastremap.renumber": timed(lambda: fastremap.renumber(ids)),
                     "numpy.unique(return_inverse)": timed(lambda: np.unique(
                         ids, return_inverse=True))},
        "distance_transform": {"edt": timed(lambda: edt.edt(vol, parallel=1)),
                               "scipy.ndimage.distance_transform_edt": timed(
                                   lambda: ndi.distance_transform_edt(vol))},
    }


def calibrate(em: np.ndarray, gt: np.ndarray, n: int = 10) -> dict:
    """Process CPU seconds of one training iteration of the affinity network (batch 8 of
    128^2, one torch thread, data sampling included), and the iterations that 20 minutes
    of one core buy at that rate. CPU time, unlike wall time, barely depends on what else
    the machine runs, so this calibrates a loaded machine too (conservatively: a quiet
    2-core machine with 2 threads runs faster than one core)."""
    import torch

    from membrane_py.augment.dataset import AffinityPatchDataset
    from membrane_py.augment.preprocess import PreprocessConfig
    from membrane_py.models import UNetConfig, build_model
    from membrane_py.train.losses import affinity_bce

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = AffinityPatchDataset(em[TRAIN], gt[TRAIN], 128, 8 * (n + 1), PreprocessConfig(),
                              context=1, seed=0)
    net = build_model(UNetConfig(in_channels=3, n_classes=3, depth=4, base_filters=16))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step(k: int) -> None:
        xs, ys = zip(*(ds[8 * k + j] for j in range(8)), strict=True)
        loss = affinity_bce(net(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up
    load, t0 = os.getloadavg()[0], time.process_time()
    for k in range(1, n + 1):
        step(k)
    per = (time.process_time() - t0) / n
    torch.set_num_threads(threads)
    return {"cpu_seconds_per_iteration": round(per, 3), "iterations": n,
            "iterations_in_20_cpu_minutes": int(1200 / per),
            "load_average_1min": round(load, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=None,
                    help="train each network for exactly N iterations of batch 8 (fresh "
                    "patches, cosine schedule); see --calibrate for what 20 CPU minutes buy")
    ap.add_argument("--minutes", type=float, default=20.0,
                    help="without --iterations: wall-clock budget for both networks together")
    ap.add_argument("--calibrate", action="store_true",
                    help="only measure the CPU seconds of one training iteration")
    ap.add_argument("--networks", default="membrane,affinity",
                    help="comma-separated: membrane (2D), affinity (2.5D)")
    ap.add_argument("--context", type=int, default=1,
                    help="sections on each side fed to the affinity network")
    ap.add_argument("--long-range", action="store_true",
                    help=f"also train the affinity network on offsets {list(LONG_RANGE)}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 at most here)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="bench/results/neurons3d", help="checkpoint folder")
    ap.add_argument("--tune", type=int, default=50,
                    help="choose parameters on sections 150-N..149 (training sections)")
    ap.add_argument("--test", type=int, default=100,
                    help="score on sections 150..149+N (100: the protocol)")
    args = ap.parse_args()
    if not (DATA / "fib25_sample2").is_dir():
        print(json.dumps({"bench": "neurons3d", "skipped": f"{DATA / 'fib25_sample2'} not found"}))
        return
    import torch

    from membrane_py.train.device import device_description, pick_device

    torch.set_num_threads(args.threads)
    kinds = args.networks.split(",")
    if not (1 <= args.tune <= 150 and 1 <= args.test <= 100) or \
            not set(kinds) <= {"membrane", "affinity"}:
        ap.error("--tune must lie in 1..150, --test in 1..100, --networks in membrane,affinity")
    tune, test = slice(150 - args.tune, 150), slice(150, 150 + args.test)
    em, gt = load()
    if args.calibrate:
        print(json.dumps({"bench": "neurons3d", "calibration": calibrate(em, gt)}, indent=1))
        return
    work = Path(args.work)
    offsets = NEAREST_OFFSETS + (LONG_RANGE if args.long_range else ())
    out = {"bench": "neurons3d", "device": device_description(pick_device(args.device)),
           "date": time.strftime("%Y-%m-%d %H:%M"),
           "budget": {"iterations": args.iterations} if args.iterations else
           {"minutes_wall_clock": args.minutes}, "torch_threads": args.threads,
           "train_sections": "0-149", "tuning_sections": f"{tune.start}-{tune.stop - 1}",
           "test_sections": f"{test.start}-{test.stop - 1}", "training": {},
           "prediction_seconds": {}}
    seconds = None if args.iterations else args.minutes * 60 / len(kinds)
    nets = {}
    for kind in kinds:
        log(f"training the {kind} network")
        model, out["training"][kind] = train(
            kind, em, gt, work, args.device, seconds=seconds, iterations=args.iterations,
            context=args.context, offsets=offsets)
        out["training"][kind]["load_average_1min_after"] = round(os.getloadavg()[0], 1)
        log("predicting")
        pred, out["prediction_seconds"][kind] = predict(model, em[:test.stop], tune.start,
                                                        args.device)
        if kind == "membrane":
            nets["membrane 2D"] = (pred[1], None)
            out["membrane_fraction"] = {
                "predicted (p > 0.5), test sections": round(float(
                    (pred[1][test] > 0.5).mean()), 3)}
        else:
            label = f"affinity 2.5D, context {args.context}" + (
                ", long-range offsets" if args.long_range else "")
            nets[label] = (pred, [list(d) for d in offsets])
            out["boundary_fraction"] = {
                "predicted (mean z/y/x affinity < 0.5), test sections": round(float(
                    (pred[:3, test].mean(axis=0) < 0.5).mean()), 3)}
    from membrane_py.augment.affinities import affinities

    truth = affinities(gt[test.start - 1:test.stop])[:, 1:].astype(np.float32)
    truth[truth == 255] = 1.0  # bodies tile FIB-25: its boundaries are id changes, not id 0
    out["ground_truth_boundary_fraction_test"] = {
        "id 0": round(float((gt[test] == 0).mean()), 3),
        "mean z/y/x affinity < 0.5": round(float((truth.mean(axis=0) < 0.5).mean()), 3)}
    out["rows"] = methods(nets, gt[:test.stop], tune, test) + ffn(gt, test)
    out["libraries_seconds"] = libraries(gt)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
