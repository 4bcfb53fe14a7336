"""Do suggested regions teach a network more than random ones? (one JSON object)

Simulates the annotate-train loop on ISBI 2012 (../shared/data/isbi2012, labels 0 =
membrane), with the ground truth standing in for the annotator. A small U-Net starts from
``--initial`` random ``--region`` px squares of sections 00-09; each round every arm adds
``--k`` regions of sections 00-14 (labels only inside them; the rest of a section is 0 =
unknown, which the loss ignores) and fine-tunes its previous network for the same fixed
number of iterations on everything it has labelled so far:

- ``topk``: the k regions ``membrane suggest`` ranks first on the arm's network (by the
  entropy of the membrane probability, or the TTA spread with ``--tta`` > 1;
  :func:`membrane_py.predict.suggest.rank_regions`), never one already labelled;
- ``sampled``: k regions drawn with probability proportional to that uncertainty to the
  power ``--power`` (``membrane suggest --sample``), under the same rules;
- ``unstable``: k regions drawn likewise by their share of pixels on which the
  segmentation's topology hangs (:func:`membrane_py.segment.instability.instability`: cells
  joined or split depending on the threshold, between 0.3 and 0.7);
- ``random``: k random regions of the same size (so the same area), not overlapping the
  labelled ones.

Every arm trains under the same protocol, chosen so that it does not punish an arm for
*which* pixels it labelled (the cause of an earlier, lopsided result; docs/assist.md):

- the ``weighted_ce`` class weights are computed once, from the initial regions, and kept
  for every fine-tuning of every arm (``--class-weights initial``); recomputing them from
  each arm's labels (``per-round``) lowers the membrane weight of an arm whose regions are
  membrane-dense, and its network then marks less membrane;
- each network's membrane threshold, and whether prediction adapts its batch norm to the EM
  it predicts, are chosen on its own labelled regions (the best mean V_rand of those
  squares over 0.1 .. 0.9, plain and with the batch norm adapted to the labelled sections),
  as an annotator would tune them on what they annotated and as training's whole-section
  validation chooses them for ``membrane predict``'s default; never on the held-out
  sections.

Each network is scored on the held-out sections 15-19 with V_rand after that threshold and
way + watershed as ``membrane evaluate`` (:func:`membrane_py.train.metrics.membrane_scores`;
adapted networks adapted to the held-out sections, as ``membrane predict`` adapts to the
volume it predicts). Also reported: plain at its own picked threshold (``v_rand_plain``, the
metric before 2026-12-02), the V_rand at the fixed threshold 0.5 and at the best threshold
over 0.1 .. 0.9 for the held-out sections (the ISBI 2012 challenge's convention; it shows
what a network learned apart from how its probabilities happen to sit around a threshold),
adapted at its picked and best thresholds, and ``v_rand_section``: threshold and way picked
on one fully labelled held-out section, the other four scored, averaged over which one is
labelled (a user with one validation section; the same choice data for every arm, so the
few labelled squares' bias and noise stay out of it). ``--seeds`` repeats
it all (initial regions, random picks, training order); the seeds run in parallel processes.
Training runs as ``membrane train`` would (every augmentation, bf16 autocast where the CPU
has it; Adam at ``--lr``, 1e-3). Whole-section V_rand after a few dozen iterations on a few squares
varies a lot from seed to seed, so read the per-seed differences and their spread, not one
run::

    python bench/active_learning.py --rounds 2 --seeds 2   # the defaults
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from membrane_py.augment import labels as L
from membrane_py.augment.dataset import OnTheFlyPatchDataset
from membrane_py.augment.labels import convert_labels
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.infer.batchnorm import ADAPT_PATCHES, crops
from membrane_py.infer.engine import load_predictor
from membrane_py.predict.suggest import rank_regions
from membrane_py.segment.instability import instability
from membrane_py.train.config import TrainJob
from membrane_py.train.losses import class_weights_from_counts
from membrane_py.train.metrics import membrane_scores
from membrane_py.train.trainer import train_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
POOL, INITIAL_POOL, HELD_OUT = range(0, 15), range(0, 10), range(15, 20)
ARMS = ("topk", "sampled", "unstable", "random")
THRESHOLDS = np.round(np.arange(0.1, 0.95, 0.1), 2)


def load(sections: range) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [L.read_image(DATA / "images" / f"{i:02d}.png") for i in sections]
    raw = [L.decode_label_image(L.read_image(DATA / "labels" / f"{i:02d}.png")) for i in sections]
    return images, convert_labels(raw, "isbi")[0]


def overlaps(a: tuple[int, int, int], b: tuple[int, int, int], side: int) -> bool:
    """Two (z, y, x) top-left squares of ``side`` px share pixels."""
    return a[0] == b[0] and abs(a[1] - b[1]) < side and abs(a[2] - b[2]) < side


def random_regions(rng: np.random.Generator, sections: range, shape: tuple[int, int], side: int,
                   n: int, taken: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``n`` random (z, y, x) squares overlapping neither ``taken`` nor each other."""
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        c = (int(rng.choice(sections)), int(rng.integers(shape[0] - side + 1)),
             int(rng.integers(shape[1] - side + 1)))
        if not any(overlaps(c, t, side) for t in taken + out):
            out.append(c)
    return out


def masked_labels(labels: list[np.ndarray], regions: list[tuple[int, int, int]],
                  side: int) -> tuple[list[int], list[np.ndarray]]:
    """Sections holding regions and their labels with everything outside them 0 (unknown)."""
    keep: dict[int, np.ndarray] = {}
    for z, y, x in regions:
        lab = keep.setdefault(z, np.zeros_like(labels[z]))
        lab[y:y + side, x:x + side] = labels[z][y:y + side, x:x + side]
    zs = sorted(keep)
    return zs, [keep[z] for z in zs]


def region_weights(labels: list[np.ndarray], regions, side: int) -> list[float]:
    """``weighted_ce`` class weights from the label frequencies inside ``regions``."""
    _, labs = masked_labels(labels, regions, side)
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labs]), minlength=3)[1:3]
    return class_weights_from_counts(counts.tolist()).tolist()


def train(images: list[np.ndarray], labels: list[np.ndarray], regions, args, out: Path,
          name: str, seed: int, parent: Path | None, iterations: int,
          weights: list[float] | None) -> Path:
    """Fine-tune ``parent`` (or train from scratch) for exactly ``iterations`` batches on the
    labelled regions with class ``weights`` (None: from these regions' labels); returns the
    checkpoint."""
    zs, labs = masked_labels(labels, regions, args.region)
    per_epoch = args.batch * iterations
    cfg = TrainJob(out_dir=str(out), name=name, patch_size=args.patch, batch_size=args.batch,
                   epochs=1, patches_per_epoch=per_epoch, depth=args.depth,
                   base_filters=args.base_filters, lr=args.lr, device="cpu", seed=seed,
                   voxel_size=[50.0, 4.0, 4.0], log_every=10 ** 6, amp=args.amp,
                   pretrained=None if parent is None else str(parent), class_weights=weights,
                   augment=AugmentConfig() if args.augment == "flips" else AugmentConfig.all_on())
    # unrotated patches (flips and the other augmentations stay): a square region holds few
    # saturated rotated patches, and searching for them costs more than the training step
    ds = OnTheFlyPatchDataset([images[z] for z in zs], labs, args.patch, per_epoch,
                              cfg.preprocess_config, cfg.augment, seed=seed, rotate=False)
    t = time.perf_counter()
    train_model(ds, None, cfg, n_classes=2)
    log(f"{name}: {iterations} iterations on {len(regions)} regions in "
        f"{time.perf_counter() - t:.0f} s")
    return cfg.last_path


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def membrane(checkpoint: Path, images: list[np.ndarray], adapt_bn: bool = False) -> np.ndarray:
    """The (z, y, x) membrane probability of a stack (``adapt_bn``: with the batch norm
    adapted to crops of the stack first, as ``membrane predict --adapt-bn``)."""
    predictor = load_predictor(checkpoint, backend="torch", device="cpu", precision="fp32",
                               adapt_bn=(lambda: crops(images, ADAPT_PATCHES))
                               if adapt_bn else None)
    return predictor.predict(np.stack(images))[:, 1]


def curves(probs: np.ndarray, labels: list[np.ndarray]) -> np.ndarray:
    """V_rand of every section (rows) at every threshold of :data:`THRESHOLDS` (columns)."""
    return np.array([[membrane_scores(p, gt, t)["v_rand"] for t in THRESHOLDS]
                     for p, gt in zip(probs, labels, strict=True)])


def picked_on_a_section(plain: np.ndarray, adapted: np.ndarray) -> float:
    """Held-out V_rand when threshold and way are picked on one fully labelled held-out
    section and the others are scored, averaged over which section is the labelled one: the
    choice a user with one validation section makes, the same data for every arm."""
    both = np.stack([plain, adapted])                        # (way, section, threshold)
    scores = []
    for s in range(both.shape[1]):
        way, t = np.unravel_index(np.argmax(both[:, s]), both[:, s].shape)
        scores.append(np.delete(both[way, :, t], s).mean())
    return float(np.mean(scores))


def pick_threshold(checkpoint: Path, images: list[np.ndarray], labels: list[np.ndarray],
                   regions, side: int, adapt_bn: bool) -> tuple[float, float]:
    """The threshold of :data:`THRESHOLDS` with the best mean V_rand over the labelled
    ``regions`` (training data only; ``adapt_bn``: the batch norm adapted to the labelled
    sections), and that V_rand."""
    zs = sorted({z for z, _, _ in regions})
    probs = dict(zip(zs, membrane(checkpoint, [images[z] for z in zs], adapt_bn), strict=True))
    squares = [(probs[z][y:y + side, x:x + side], labels[z][y:y + side, x:x + side])
               for z, y, x in regions]
    means = [np.mean([membrane_scores(p, gt, t)["v_rand"] for p, gt in squares])
             for t in THRESHOLDS]
    best = int(np.argmax(means))
    return float(THRESHOLDS[best]), float(means[best])


def score(checkpoint: Path, pool_im, pool_lab, regions, test_im, test_lab,
          side: int) -> dict:
    """Held-out V_rand as the user would predict: threshold and way (plain, or the batch
    norm adapted to the EM) picked on the labelled regions, as training's validation picks
    them (:func:`membrane_py.train.section_validation.best_section_scores`); then plain at
    the threshold picked for it, at 0.5 and at the best threshold for the held-out sections
    (as the ISBI 2012 challenge scored), and adapted at its own picked and best thresholds."""
    t_plain, on_plain = pick_threshold(checkpoint, pool_im, pool_lab, regions, side, False)
    t_adapt, on_adapt = pick_threshold(checkpoint, pool_im, pool_lab, regions, side, True)
    probs = membrane(checkpoint, test_im)
    plain_curves = curves(probs, test_lab)
    adapted_curves = curves(membrane(checkpoint, test_im, adapt_bn=True), test_lab)
    at = {float(t): i for i, t in enumerate(THRESHOLDS)}
    plain = float(plain_curves[:, at[t_plain]].mean())
    adapt = float(adapted_curves[:, at[t_adapt]].mean())
    chosen = on_adapt > on_plain
    return {"v_rand": adapt if chosen else plain, "adapt_bn": float(chosen),
            "threshold": t_adapt if chosen else t_plain,
            "v_rand_section": picked_on_a_section(plain_curves, adapted_curves),
            "v_rand_plain": plain, "v_rand_at_0.5": float(plain_curves[:, at[0.5]].mean()),
            "v_rand_best": float(plain_curves.mean(0).max()),
            "v_rand_adapt_bn": adapt,
            "v_rand_adapt_bn_best": float(adapted_curves.mean(0).max()),
            "membrane_fraction": float((probs > 0.5).mean())}


def suggest(checkpoint: Path, images: list[np.ndarray], taken, args, seed: int,
            arm: str) -> list[tuple[int, int, int]]:
    """The k regions of the pool an arm picks, never overlapping a labelled one: ``topk``
    the most uncertain, ``sampled`` drawn by uncertainty to the power ``args.power``,
    ``unstable`` drawn likewise by the share of unstable pixels
    (:func:`membrane_py.segment.instability.instability`)."""
    if arm == "unstable":
        scores = [instability(p) for p in membrane(checkpoint, images)]
    else:
        predictor = load_predictor(checkpoint, backend="torch", device="cpu",
                                   precision="fp32", tta=args.tta)
        scores = list(predictor.predict_with_uncertainty(np.stack(images))[1])
    picks = rank_regions(enumerate(scores), args.k, args.region, args.region, 1, avoid=taken,
                         power=None if arm == "topk" else args.power, seed=seed)
    return [(z, y, x) for _, z, y, x in picks]


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    """One simulated annotation history per arm, from the same start; V_rand per round."""
    torch.set_num_threads(threads_per_seed(args))
    pool_im, pool_lab = load(POOL)
    test_im, test_lab = load(HELD_OUT)
    shape = pool_im[0].shape
    rng = np.random.default_rng(seed)
    start = random_regions(rng, INITIAL_POOL, shape, args.region, args.initial, [])
    weights = region_weights(pool_lab, start, args.region) if args.class_weights == "initial" \
        else None
    ck0 = train(pool_im, pool_lab, start, args, out, "initial", seed, None,
                args.initial_iterations, weights)
    score0 = score(ck0, pool_im, pool_lab, start, test_im, test_lab, args.region)
    arms = {a: {"regions": list(start), "checkpoint": ck0, "scores": [score0]}
            for a in args.arms}
    for r in range(1, args.rounds + 1):
        for name, arm in arms.items():
            taken = arm["regions"]
            new = (random_regions(rng, POOL, shape, args.region, args.k, taken)
                   if name == "random" else
                   suggest(arm["checkpoint"], pool_im, taken, args, seed * 100 + r, name))
            taken += new
            arm["checkpoint"] = train(pool_im, pool_lab, taken, args, out, f"{name}{r}",
                                      seed * 100 + r, arm["checkpoint"], args.iterations,
                                      weights)
            arm["scores"].append(score(arm["checkpoint"], pool_im, pool_lab, taken, test_im,
                                       test_lab, args.region))
        log(json.dumps({"seed": seed, "round": r,
                        **{a: v["scores"][-1] for a, v in arms.items()}}))
    return {"seed": seed, "class_weights": weights,
            **{a: {**{key: [round(s[key], 4) for s in v["scores"]] for key in v["scores"][0]},
                   "regions": [list(t) for t in v["regions"]]} for a, v in arms.items()}}


def threads_per_seed(args: argparse.Namespace) -> int:
    return max(args.threads // args.seeds, 1)


def compare(runs: list[dict], arm: str, rounds: int, key: str) -> dict:
    """``arm`` against ``random`` by the V_rand ``key``, per seed, after the last round:
    mean, spread and standard error of the difference, and the (seed, round) pairs the arm
    wins."""
    final = [run[arm][key][-1] - run["random"][key][-1] for run in runs]
    wins = sum(run[arm][key][r] > run["random"][key][r]
               for run in runs for r in range(1, rounds + 1))
    sd = float(np.std(final, ddof=1)) if len(final) > 1 else None
    return {"minus_random_final_mean": round(float(np.mean(final)), 4),
            "minus_random_final_sd": None if sd is None else round(sd, 4),
            "minus_random_final_se": None if sd is None else round(sd / len(final) ** 0.5, 4),
            "minus_random_final_per_seed": [round(d, 4) for d in final],
            "wins": f"{wins} of {rounds * len(runs)} (seed, round) pairs"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run are first-seed .. first-seed + seeds - 1 (to add seeds to "
                    "an earlier run)")
    ap.add_argument("--k", type=int, default=4, help="regions added per round")
    ap.add_argument("--initial", type=int, default=4, help="random regions to start from")
    ap.add_argument("--region", type=int, default=128, help="side of a region, px")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--initial-iterations", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=25, help="fine-tuning per round")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                    help="bf16 autocast (auto: where the CPU has it, as membrane train)")
    ap.add_argument("--augment", choices=("all", "flips"), default="all",
                    help="training augmentation: all (membrane train's default) or flips")
    ap.add_argument("--arms", default="topk,sampled,random",
                    help="which of topk, sampled, unstable, random (random is always run)")
    ap.add_argument("--tta", type=int, default=1, help="1: rank by the entropy of the membrane "
                    "probability; 2..8: by the spread between that many flips/rotations")
    ap.add_argument("--power", type=float, default=1.0, help="the sampled and unstable arms: "
                    "probability proportional to score ** power")
    ap.add_argument("--class-weights", choices=("initial", "per-round"), default="initial",
                    help="initial: weighted_ce weights from the initial regions, the same for "
                    "every fine-tuning of both arms; per-round: from each arm's labels so far")
    ap.add_argument("--threads", type=int, default=2, help="in all: the seeds run in parallel "
                    "processes, each with threads / seeds")
    args = ap.parse_args()
    args.amp = {"auto": "auto", "on": True, "off": False}[args.amp]
    args.arms = [a for a in ARMS
                 if a in args.arms.split(",") or a == "random"]
    if not DATA.is_dir():
        raise SystemExit(f"ISBI 2012 data not found at {DATA}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="al_bench_") as tmp, ProcessPoolExecutor(
            min(args.seeds, args.threads), mp_context=multiprocessing.get_context("fork")) as pool:
        jobs = [pool.submit(run_seed, seed, args, Path(tmp) / f"seed{seed}")
                for seed in range(args.first_seed, args.first_seed + args.seeds)]
        runs = [job.result() for job in jobs]
    def mean_of(key: str) -> dict:
        return {a: [round(float(np.mean([run[a][key][r] for run in runs])), 4)
                    for r in range(args.rounds + 1)] for a in args.arms}
    print(json.dumps({
        "bench": "active_learning", "data": "ISBI 2012", "pool_sections": "00-14",
        "initial_sections": "00-09", "held_out_sections": "15-19",
        "metric": "V_rand (higher is better), watershed as membrane evaluate at the threshold "
                  "and way (plain or batch norm adapted) picked on each network's labelled "
                  "regions (v_rand), or on one labelled held-out section, the other four "
                  "scored (v_rand_section)",
        "uncertainty": f"TTA spread, tta {args.tta}" if args.tta > 1 else "entropy",
        "sampled_power": args.power, "class_weights": args.class_weights,
        "mean_v_rand_by_round": mean_of("v_rand"),
        "mean_v_rand_section_by_round": mean_of("v_rand_section"),
        "share_adapted_by_round": mean_of("adapt_bn"),
        "mean_v_rand_plain_by_round": mean_of("v_rand_plain"),
        "mean_v_rand_at_0.5_by_round": mean_of("v_rand_at_0.5"),
        "mean_v_rand_best_threshold_by_round": mean_of("v_rand_best"),
        "mean_v_rand_adapt_bn_by_round": mean_of("v_rand_adapt_bn"),
        "mean_v_rand_adapt_bn_best_threshold_by_round": mean_of("v_rand_adapt_bn_best"),
        "mean_membrane_fraction_by_round": mean_of("membrane_fraction"),
        "against_random": {a: compare(runs, a, args.rounds, "v_rand") for a in args.arms
                           if a != "random"},
        "against_random_picked_on_a_section": {
            a: compare(runs, a, args.rounds, "v_rand_section") for a in args.arms
            if a != "random"},
        "runs": runs, "args": vars(args), "seconds": round(time.perf_counter() - t0, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch_threads_per_seed": threads_per_seed(args),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }))


if __name__ == "__main__":
    main()
