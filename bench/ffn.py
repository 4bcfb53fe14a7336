"""FFN inference with the released FIB-25 model on fib25_sample2 (one JSON object on stdout).

1. Network speed (unless ``--skip-speed``): FOV steps/s of the reference network (depth 12,
   33^3) for fp32 and bf16, contiguous and channels-last-3d, one FOV and ``--batch`` FOVs
   per call, side by side, and the share of the machine's matmul roofline (a large fp32 /
   bf16 matmul measured now) the convolutions reach.
2. In-context region (``--region`` side, default 128; 0 skips): the published objects
   seeded in a central region regrown by our inference with everything else pasted from
   the published run as it was when each seed was grown (see :func:`seeded_region`);
   agreement with the published result over those objects and both against the ground
   truth there. This is the like-for-like comparison a CPU can afford.
3. Central crop (``--crop`` side, default 64; ``--full`` for the whole 250^3; unless
   ``--skip-crop``): our inference as ``ffn infer --box`` runs it (the crop alone; seeds
   the whole volume's peaks inside it, ``--crop-seeds box`` for the crop's own), scored
   against the ground truth (adapted Rand error, VI split/merge over voxels where ground
   truth > 0, bodies after the ``transforms`` mapping), the published result over the same
   box, and the agreement of the two (adapted Rand error of ours against theirs); the
   ``_core`` scores count only the crop less one FOV radius per side. Throughput in
   voxels/s and as a share of the matmul roofline. ``--compare-early-stop`` runs the crop
   a second time without stopping doomed objects early and reports the FOV steps saved
   and whether the output is identical.
4. Object by object (``--object-steps`` budget, default 0 = skip): the published run's
   seed origins replayed in their order, strict order and fp32 over the whole volume, for
   the objects that took at most ``--max-object-steps`` FOV steps there; IoU per object.

    python bench/ffn.py [--skip-speed] [--region 128] [--crop 64 | --full] [--skip-crop]
                        [--concurrency 1] [--precision fp32] [--compare-early-stop]
                        [--object-steps 150 --max-object-steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roofline import matmul_flops  # noqa: E402

from membrane_py.ffn.canvas import FloodFiller, FloodOptions  # noqa: E402
from membrane_py.ffn.checkpoint import load_ffn  # noqa: E402
from membrane_py.ffn.predictor import FFNPredictor  # noqa: E402
from membrane_py.ffn.seeds import peak_seeds  # noqa: E402
from membrane_py.geometry import Box  # noqa: E402
from membrane_py.models.ffn import fov_flops  # noqa: E402
from membrane_py.train.device import pick_device  # noqa: E402
from membrane_py.train.metrics import rand_info_scores  # noqa: E402
from membrane_py.volumes.open import open_volume  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODEL = DATA / "ffn_fib25_model"
KEYS = ("adapted_rand_error", "vi_split", "vi_merge")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_bodies(box: Box) -> np.ndarray:
    import h5py

    from membrane_py.volumes.hdf5 import gunzip_cached

    with h5py.File(gunzip_cached(DATA / "fib25_sample2" / "groundtruth.h5.gz")) as f:
        fragments = f["stack"][box.z0:box.z1, box.y0:box.y1, box.x0:box.x1].astype(np.int64)
        pairs = f["transforms"][()].astype(np.int64)
    lut = np.arange(max(int(fragments.max()), int(pairs[:, 0].max())) + 1)
    lut[pairs[:, 0]] = pairs[:, 1]
    return lut[fragments]


class _Origin(tuple):
    """Stands in for the reference's OriginInfo(start_zyx, iters, walltime) when unpickling."""

    def __new__(cls, *args):
        return tuple.__new__(cls, args[0] if len(args) == 1 else args)

    def __setstate__(self, state) -> None:
        self.state = state


class _OriginsUnpickler(pickle.Unpickler):
    """Only numpy scalars and the reference's OriginInfo; anything else is refused."""

    def find_class(self, module: str, name: str):
        if "ffn" in module or module.startswith("google3"):
            return _Origin
        if module.startswith("numpy") and name in ("scalar", "dtype", "_reconstruct",
                                                    "ndarray"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def reference_origins() -> dict[int, tuple[tuple[int, int, int], int]]:
    """id -> (seed z, y, x; FOV steps) of the published run."""
    with zipfile.ZipFile(MODEL / "sample-training2.npz") as z, z.open("origins.npy") as fp:
        version = np.lib.format.read_magic(fp)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        read(fp, max_header_size=10_000)
        origins = _OriginsUnpickler(fp, encoding="latin1").load().item()
    out = {}
    for k, v in origins.items():
        fields = tuple(v) if len(v) else tuple(v.state)
        out[int(k)] = (tuple(int(c) for c in fields[0]), int(fields[1]))
    return out


def replay_objects(model, budget: int, max_object_steps: int) -> dict:
    """The published run's objects regrown from its seeds (see the docstring)."""
    origins = reference_origins()
    chosen, steps = [], 0
    for k in sorted(origins):
        if origins[k][1] > max_object_steps:
            continue  # a large object: skipped (its territory stays free in our run)
        if steps + origins[k][1] > budget:
            break
        chosen.append(k)
        steps += origins[k][1]
    raw = open_volume(DATA / "fib25_sample2" / "grayscale").read(Box.full((250, 250, 250)))
    image = (raw.astype(np.float32) - 128) / 33
    reference = np.load(MODEL / "sample-training2.npz")["segmentation"]
    filler = FloodFiller(image, FFNPredictor(model, "cpu", "fp32"), model.config.fov,
                         model.config.deltas, FloodOptions(), concurrency=1)
    t = time.perf_counter()
    seg = filler.segment_all(np.array([origins[k][0] for k in chosen]))
    seconds = time.perf_counter() - t
    rows = []
    ours_by_seed = {seed: i for i, seed in filler.origins.items()}
    for k in chosen:
        ours_id = ours_by_seed.get(origins[k][0])
        if ours_id is None:
            rows.append({"id": k, "found": False})
            continue
        a, b = seg == ours_id, reference == k % 256
        rows.append({"id": k, "found": True, "voxels": int(a.sum()),
                     "iou": round(float((a & b).sum() / max((a | b).sum(), 1)), 4)})
    ious = [r["iou"] for r in rows if r["found"]]
    return {"objects": len(chosen), "max_object_steps": max_object_steps,
            "fov_steps": filler.stats.steps,
            "published_fov_steps": steps, "seconds": round(seconds, 1),
            "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
            "objects_iou_above_0.99": sum(i > 0.99 for i in ious), "per_object": rows}


def network_speed(model, device, batch: int, reps: int) -> list[dict]:
    rows = []
    flop = fov_flops(model.config)
    peak = {"fp32": matmul_flops(device, torch.float32, 4096) / 1e9,
            "bf16": matmul_flops(device, torch.bfloat16, 4096) / 1e9}
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            pred = FFNPredictor(model, device, precision, channels_last)
            for b in (1, batch):
                x = np.random.default_rng(0).standard_normal((b, 33, 33, 33), np.float32)
                pred(x, x)  # warm-up (kernel choice)
                t = time.perf_counter()
                for _ in range(reps):
                    pred(x, x)
                per_step = (time.perf_counter() - t) / (reps * b)
                gflops = flop / per_step / 1e9
                rows.append({"precision": precision, "channels_last": channels_last,
                             "batch": b, "fov_steps_per_s": round(1 / per_step, 3),
                             "gflop_per_s": round(gflops, 1),
                             "matmul_roofline_share": round(gflops / peak[precision], 3)})
    return rows, {k: round(v, 1) for k, v in peak.items()}


def scores(seg: np.ndarray, gt: np.ndarray) -> dict:
    r = rand_info_scores(seg, gt)
    return {k: round(r[k], 4) for k in KEYS}


def crop_run(ckpt, model, device, args, early_stop: bool) -> dict:
    """Our inference over the central crop (or the whole volume), scored against the ground
    truth and the published result over the same box and its core."""
    side = 250 if args.full else args.crop
    lo = (250 - side) // 2
    box = Box(lo, lo + side, lo, lo + side, lo, lo + side)
    raw = open_volume(DATA / "fib25_sample2" / "grayscale").read(box)
    image = (raw.astype(np.float32) - ckpt.image_mean) / ckpt.image_stddev
    gt = load_bodies(box)
    reference = np.load(MODEL / "sample-training2.npz")["segmentation"][
        box.z0:box.z1, box.y0:box.y1, box.x0:box.x1].astype(np.int64)
    options = FloodOptions()  # = inference_training_sample2.pbtxt
    predictor = FFNPredictor(model, device, args.precision, args.channels_last)
    filler = FloodFiller(image, predictor, ckpt.config.fov, ckpt.config.deltas, options,
                         concurrency=args.concurrency, early_stop=early_stop)
    t = time.perf_counter()
    if args.crop_seeds == "volume":  # the published run's seeds: peaks of the whole volume
        whole = open_volume(DATA / "fib25_sample2" / "grayscale").read(Box.full((250,) * 3))
        seeds = peak_seeds((whole.astype(np.float32) - ckpt.image_mean) / ckpt.image_stddev)
        seeds = seeds[np.all((seeds >= lo) & (seeds < lo + side), axis=1)] - lo
    else:  # what `membrane ffn infer --box` does: peaks of the crop's own image
        seeds = peak_seeds(image)
    last = [t]

    def show(event) -> None:  # a line a minute: a full run takes hours on a CPU
        if time.perf_counter() - last[0] >= 60:
            last[0] = time.perf_counter()
            print(f"crop: {event.done} of {event.total} seeds, {event.message}, "
                  f"{last[0] - t:.0f} s", file=sys.stderr, flush=True)

    seg = filler.segment_all(seeds, progress=show).astype(np.int64)
    seconds = time.perf_counter() - t
    if args.save:
        np.savez_compressed(args.save, segmentation=seg.astype(np.uint32),
                            box_zyx=[box.z0, box.z1, box.y0, box.y1, box.x0, box.x1],
                            origins=np.array(list(filler.origins.values()), np.int32))
    print(f"crop (early stop {early_stop}): {filler.stats.steps} FOV steps in {seconds:.0f} s",
          file=sys.stderr, flush=True)
    s = filler.stats
    # the core: the crop less one FOV radius per side, where every voxel can be reached
    # by a FOV centred inside the crop
    r = ckpt.config.radius
    core = tuple(slice(q, n - q) for q, n in zip(r, seg.shape, strict=True))
    row = {
        "run": "full volume" if args.full else f"central crop {side}^3",
        "box_zyx": [box.z0, box.z1, box.y0, box.y1, box.x0, box.x1],
        "voxels": int(seg.size), "precision": args.precision,
        "channels_last": args.channels_last, "concurrency": args.concurrency,
        "early_stop": early_stop, "seeds_from": args.crop_seeds,
        "options": {k: v if not isinstance(v, tuple) else list(v)
                    for k, v in vars(options).items()},
        "seeds": int(len(seeds)), "objects": s.objects, "rejected": s.rejected,
        "stopped_early": s.stopped_early, "restarts": s.restarts,
        "discarded_fov_steps": s.discarded_steps,
        "fov_steps": s.steps, "network_calls": s.calls, "seconds": round(seconds, 1),
        "network_seconds": round(s.network_s, 1),
        "fov_steps_per_s": round(s.steps / seconds, 3),
        "voxels_per_s": round(seg.size / seconds, 1),
        "segmented_fraction": round(float((seg > 0).mean()), 3),
        "ours_vs_gt": scores(seg, gt),
        "published_vs_gt_same_box": scores(reference, gt),
        "agreement_adapted_rand_error": scores(seg, reference)["adapted_rand_error"],
        "core_box_zyx": [box.z0 + r[0], box.z1 - r[0], box.y0 + r[1], box.y1 - r[1],
                         box.x0 + r[2], box.x1 - r[2]],
        "ours_vs_gt_core": scores(seg[core], gt[core]),
        "published_vs_gt_core": scores(reference[core], gt[core]),
        "agreement_adapted_rand_error_core": scores(seg[core], reference[core])[
            "adapted_rand_error"],
    }
    return row, seg


PASTED = 1_000_000  # pasted published objects get ids above this


def seeded_region(ckpt, model, device, args) -> dict:
    """The published run's objects seeded in a central region, regrown in context.

    Every peak seed of the whole volume is visited in the published (z, y, x) order. A seed
    outside the region whose published object exists gets that object pasted (on voxels
    still free), exactly when the published run created it; seeds inside the region are
    grown by our inference over the whole volume (its FOVs may leave the region), except
    those whose published object took more than ``--region-max-steps`` FOV steps, which are
    pasted like the others (so the run stays affordable on a CPU). So each
    of our objects meets the state the published run had when it grew the same seed, at
    the cost of the region's objects only. Agreement: adapted Rand error of ours against
    the published result over the union of the voxels of both runs' region-seeded objects
    (published background there counts as one more segment, so growing into it counts),
    and both against the ground truth over that union.
    """
    side = args.region
    lo, hi = (250 - side) // 2, (250 - side) // 2 + side
    raw = open_volume(DATA / "fib25_sample2" / "grayscale").read(Box.full((250, 250, 250)))
    image = (raw.astype(np.float32) - ckpt.image_mean) / ckpt.image_stddev
    published = np.load(MODEL / "sample-training2.npz")["segmentation"].astype(np.int64)
    origins = reference_origins()
    by_seed = {seed: k for k, (seed, _) in origins.items()}
    boxes = ndimage.find_objects(published)
    filler = FloodFiller(image, FFNPredictor(model, device, args.precision,
                                             args.channels_last),
                         ckpt.config.fov, ckpt.config.deltas, FloodOptions(),
                         concurrency=args.concurrency)
    seg = filler.segmentation

    def inside(seed) -> bool:
        return all(lo <= v < hi for v in seed)

    def grown(seed) -> bool:  # ours to grow: in the region, not a large published object
        return inside(seed) and (seed not in by_seed or
                                 origins[by_seed[seed]][1] <= args.region_max_steps)

    t = time.perf_counter()
    seeds = [tuple(int(v) for v in x) for x in peak_seeds(image)]
    batch: list = []
    for seed in [*seeds, None]:
        if seed is not None and grown(seed):
            batch.append(seed)
            continue
        if seed is not None and seed not in by_seed:
            continue  # a seed that made no object in the published run
        if batch:
            filler.segment_all(np.array(batch))
            batch = []
            print(f"region: {filler.stats.steps} FOV steps, {len(filler.origins)} objects, "
                  f"{time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        if seed is not None:
            k = by_seed[seed]
            sel = boxes[k - 1]
            seg[sel][(published[sel] == k) & (seg[sel] <= 0)] = PASTED + k
    seconds = time.perf_counter() - t
    ours = np.maximum(seg, 0).astype(np.int64)
    ours_ids = sorted(filler.origins)
    pub_ids = sorted(k for k, (seed, _) in origins.items() if grown(seed))
    large = sorted(k for k, (seed, _) in origins.items() if inside(seed) and not grown(seed))
    union = np.isin(ours, ours_ids) | np.isin(published, pub_ids)
    if not union.any():
        raise SystemExit(f"no object was seeded in the central {side}^3: use a larger --region")
    pub_u = published[union]
    pub_u = np.where(pub_u == 0, published.max() + 1, pub_u)  # background as a segment
    gt = load_bodies(Box.full((250, 250, 250)))
    rows, ious = [], []
    ours_by_seed = {seed: i for i, seed in filler.origins.items()}
    for k in pub_ids:
        i = ours_by_seed.get(origins[k][0])
        a, b = (seg == i) if i else np.zeros(1, bool), published == k
        iou = float((a & b).sum() / max((a | b).sum(), 1)) if i else 0.0
        ious.append(iou)
        rows.append({"id": k, "published_fov_steps": origins[k][1], "found": bool(i),
                     "iou": round(iou, 4)})
    extra = [i for i, seed in filler.origins.items() if seed not in by_seed]
    s = filler.stats
    return {
        "run": f"central region {side}^3: published objects seeded in it, regrown in "
               "context (objects seeded elsewhere pasted from the published run)",
        "region_zyx": [lo, hi] * 3, "precision": args.precision,
        "region_max_steps": args.region_max_steps,
        "large_objects_pasted": [[k, origins[k][1]] for k in large],
        "concurrency": args.concurrency, "seeds_in_region": sum(map(inside, seeds)),
        "published_objects": len(pub_ids), "our_objects": len(ours_ids),
        "our_objects_not_in_published": len(extra),
        "published_fov_steps": sum(origins[k][1] for k in pub_ids),
        "fov_steps": s.steps, "rejected": s.rejected, "restarts": s.restarts,
        "discarded_fov_steps": s.discarded_steps, "seconds": round(seconds, 1),
        "fov_steps_per_s": round(s.steps / seconds, 3),
        "union_voxels": int(union.sum()),
        "agreement_adapted_rand_error": scores(ours[union], pub_u)["adapted_rand_error"],
        "ours_vs_gt_union": scores(ours[union], gt[union]),
        "published_vs_gt_union": scores(published[union], gt[union]),
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "objects_iou_above_0.99": sum(i > 0.99 for i in ious), "per_object": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", type=int, default=64, help="central crop side (voxels)")
    ap.add_argument("--full", action="store_true", help="segment the whole 250^3 volume")
    ap.add_argument("--crop-seeds", default="volume", choices=("volume", "box"),
                    help="crop seeds: the whole volume's peaks inside the crop (as in the "
                         "published run) or the crop's own peaks (as ffn infer --box)")
    ap.add_argument("--region", type=int, default=128,
                    help="side of the central region of the in-context run (0 = skip)")
    ap.add_argument("--region-max-steps", type=int, default=60,
                    help="published objects seeded in the region that took more FOV steps "
                         "are pasted, not regrown (keeps the run affordable on a CPU)")
    ap.add_argument("--save", type=Path, help="also write the crop's (or --full volume's) "
                    "segmentation, box and object origins to this .npz")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="objects side by side (same result; pays on a GPU, not on a CPU)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16 is twice as fast on a CPU with AVX-512 BF16 but moves "
                         "object borders a little, so it does not reproduce the run exactly")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--batch", type=int, default=4, help="batch for the network-speed table")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-crop", action="store_true")
    ap.add_argument("--compare-early-stop", action="store_true",
                    help="run the crop also without stopping doomed objects early and "
                         "compare FOV steps, speed and output")
    ap.add_argument("--object-steps", type=int, default=0,
                    help="FOV-step budget of the object-by-object replay (0 = skip)")
    ap.add_argument("--max-object-steps", type=int, default=30,
                    help="replay only objects that took at most this many FOV steps")
    args = ap.parse_args()
    if not MODEL.is_dir():
        sys.exit(f"{MODEL} not found: this benchmark needs ../shared/data")
    device = pick_device("auto")
    ckpt = load_ffn(MODEL / "model.ckpt-27465036")
    model = ckpt.build_model()
    out = {"device": str(device), "cpu": cpu_name(), "threads": torch.get_num_threads(),
           "load_average_start": os.getloadavg()[0],
           "model": {"config": ckpt.config.to_dict(), "gflop_per_fov_step":
                     round(fov_flops(ckpt.config) / 1e9, 2)}}
    if not args.skip_speed:
        out["network_speed"], out["matmul_gflop_per_s"] = network_speed(
            model, device, args.batch, args.reps)
    if args.object_steps:
        out["reference_objects"] = replay_objects(model, args.object_steps,
                                                  args.max_object_steps)
    if args.region:
        out["seeded_region"] = seeded_region(ckpt, model, device, args)
    if not args.skip_crop:
        peak = matmul_flops(device, torch.bfloat16 if args.precision == "bf16"
                            else torch.float32, 4096) / 1e9
        row, seg = crop_run(ckpt, model, device, args, early_stop=True)
        row["gflop_per_s"] = round(row["fov_steps"] * fov_flops(ckpt.config)
                                   / row["seconds"] / 1e9, 1)
        row["matmul_roofline_share"] = round(row["gflop_per_s"] / peak, 3)
        out["segmentation"] = row
        if args.compare_early_stop:
            before, seg0 = crop_run(ckpt, model, device, args, early_stop=False)
            out["without_early_stop"] = {
                k: before[k] for k in ("fov_steps", "network_calls", "seconds",
                                       "fov_steps_per_s", "voxels_per_s", "rejected")}
            out["without_early_stop"]["identical_output"] = bool(np.array_equal(seg, seg0))
        out["reference_published_run"] = {"voxels_per_s": 39_700, "hardware": "P100 (README)"}
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
