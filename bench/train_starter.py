"""The recipe of the shipped starter membrane model (``--model starter``); prints JSON.

``train``: stage public EM with ground truth from ../shared/data into ``--work`` and train
with the project's own trainer (a ``TrainJob``, written to ``<work>/starter_job.json`` so
``membrane run`` repeats it):

- ISBI 2012 sections 00-14 (ssTEM, 4 x 4 x 50 nm), labels by ``membrane gt import``
  (binary, 0 = membrane), at their own 4 nm pixels and a second time shrunk 2x (8 nm);
- FIB-25 ``fib25_sample2`` sections 0-199 (FIB-SEM, 10 nm isotropic), membranes from the
  fragment ids and their ``transforms`` body mapping by ``membrane gt membrane --mapping``
  (3 px bands, boundary voxels are membrane), at their own 10 nm pixels.

Pixel sizes: the two data sets are not rescaled to one size; the mix covers 4, 8 and 10 nm
pixels (membranes about 3 to 12 pixels wide), so the model suits EM anywhere in that range
at the resolution a user predicts at. All augmentations (flips, rotations, blur, motion
blur, histogram equalisation / CLAHE, brightness / contrast / gamma, elastic) make it
tolerate other microscopes' contrast. Network: the CPU default U-Net (depth 4, 16 filters),
128^2 patches (FIB-25 sections are 250^2).

``evaluate``: whole-section scores of a checkpoint (default: the shipped starter) through
the ``evaluate`` job (same prediction and watershed as ``membrane evaluate``) on ISBI 15-19
and FIB-25 sections 200-249, unchanged and after fine-tuning on ISBI 00-02 for a fixed
number of iterations (``--finetune-iterations``; the default is what 2 minutes of an idle
2-core CPU reach, see ``FINETUNE_ITERATIONS``), next to a network trained from scratch for
as many iterations. ``finetuned`` trains on all three sections without validation;
``validated`` as ``membrane train`` does by default, one of the three held out for
whole-section validation, which decides whether prediction adapts the batch norm (the
evaluation follows each checkpoint's choice, as ``membrane evaluate`` does).

``ship`` (also the end of ``train``): the best checkpoint becomes the package's
``membrane_py/models/weights/membranes_starter.pt`` without its optimizer state and with
float16 weights (loaded into float32; the scores are those of the shipped file).

Recorded run: ``train --stop-after-epoch 2`` on a 2-core CPU shared with seven other jobs
(the epochs took 10 and 20 minutes); see docs/training.md "Starter model" for its scores.

    python bench/train_starter.py train --work /tmp/starter --stop-after-epoch 2
    python bench/train_starter.py evaluate --work /tmp/starter_eval
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from membrane_py.augment import labels as L
from membrane_py.augment.groundtruth import GtJob, run_gt
from membrane_py.augment.transforms import AugmentConfig
from membrane_py.codes import write_png
from membrane_py.events import Cancelled, CancelToken, Event
from membrane_py.predict.evaluate import EvaluateJob, run_evaluation
from membrane_py.train.checkpoint import load_checkpoint, save_checkpoint, starter_path
from membrane_py.train.config import TrainJob
from membrane_py.train.device import device_description, pick_device
from membrane_py.train.trainer import run_training
from membrane_py.volumes.base import downsample_xy

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ISBI, FIB = DATA / "isbi2012", DATA / "fib25_sample2"
FIB_GT = FIB / "groundtruth.h5.gz"
ISBI_TRAIN, ISBI_TEST, ISBI_FINETUNE = range(0, 15), range(15, 20), range(0, 3)
FIB_TRAIN, FIB_TEST = range(0, 200), range(200, 250)
#: the starter's training run: epochs x patches per epoch (batch 8, 128^2), 160 iterations,
#: sized for about 45 minutes of a 2-core CPU shared with seven busy jobs; the recorded run
#: (--stop-after-epoch 2) stopped after 80 iterations, 30 minutes at load average 20 to 40
EPOCHS, PATCHES_PER_EPOCH, BATCH, PATCH = 4, 320, 8, 128
#: fine-tuning iterations (batch 8, 256^2 patches, the `membrane train` defaults) that 2
#: minutes of an idle 2-core CPU reach: bench/accuracy_isbi.py --minutes 10 trained the
#: depth-4 / 16-filter network for 812-887 such iterations in 10 minutes there (bf16
#: autocast; docs/training.md)
IDLE_ITERATIONS_PER_MINUTE = 85
FINETUNE_ITERATIONS = 2 * IDLE_ITERATIONS_PER_MINUTE


def log_event(event: Event) -> None:
    """Print log lines, warnings and epoch records (the run's progress, for the log file)."""
    if event.kind in ("log", "warning") or (event.kind == "metric"
                                             and event.message == "epoch"):
        print(json.dumps({"t": round(time.time()), **event.to_dict()}), flush=True)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def stage_isbi(sections: range, images: Path, labels: Path, shrink: tuple[int, ...] = (1,)):
    """ISBI sections and their membrane classes (``membrane gt import`` of the binary labels)
    into ``images`` / ``labels``, at 4 nm and shrunk by each further factor in ``shrink``."""
    raw = labels.parent / f"{labels.name}_isbi_raw"
    for d in (images, raw):
        d.mkdir(parents=True, exist_ok=True)
    for i in sections:
        for src, dst in ((ISBI / "labels" / f"{i:02d}.png", raw), (ISBI / "images" /
                                                                  f"{i:02d}.png", images)):
            link = dst / f"isbi_{i:02d}.png"
            if not link.exists():
                link.symlink_to(src)
    run_gt(GtJob(conversion="import", input=str(raw), output=str(labels), mode="binary",
                 membrane_value=0))
    for factor in shrink:
        if factor == 1:
            continue
        for i in sections:
            stem = f"isbi_{i:02d}"
            em = L.read_image(images / f"{stem}.png")[None]
            lab = L.read_image(labels / f"{stem}_label.png")[None]
            write_png(images / f"{stem}_x{factor}.png", downsample_xy(em, factor, False)[0])
            write_png(labels / f"{stem}_x{factor}_label.png",
                      downsample_xy(lab, factor, True)[0])


def stage_fib25(sections: range, images: Path, labels: Path) -> None:
    """FIB-25 sections and membranes from the ground-truth ids (``membrane gt membrane
    --mapping``; 0 = boundary between bodies, hence ``fill_ecs``)."""
    images.mkdir(parents=True, exist_ok=True)
    box = [0, 249, 0, 249, sections[0], sections[-1]]  # VAST order, inclusive
    run_gt(GtJob(conversion="membrane", input=f"{FIB_GT}:stack", output=str(labels),
                 mapping=f"{FIB_GT}:transforms", fill_ecs=True, box=box,
                 images=str(FIB / "grayscale")))
    for z in sections:
        link = images / f"iso.{2600 + z}.png"
        if not link.exists():
            link.symlink_to(FIB / "grayscale" / link.name)


def starter_job(work: Path) -> TrainJob:
    return TrainJob(
        image_dir=str(work / "data" / "images"), label_dir=str(work / "data" / "labels"),
        label_format="classes", out_dir=str(work / "run"), name="membranes_starter",
        patch_size=PATCH, patches_per_epoch=PATCHES_PER_EPOCH, val_patches=32,
        val_fraction=0.05, augment=AugmentConfig.from_names(["all"]), depth=4, base_filters=16,
        epochs=EPOCHS, batch_size=BATCH, lr=1e-3, schedule="cosine", loss="weighted_ce",
        device="cpu", seed=0, log_every=20, best_metric="val_loss",
        # mixed 4, 8 and 10 nm pixels (module docstring); recorded as the middle, 8 nm
        voxel_size=[30.0, 8.0, 8.0])


def train(args) -> dict:
    work = Path(args.work)
    images, labels = work / "data" / "images", work / "data" / "labels"
    t0 = time.perf_counter()
    stage_isbi(ISBI_TRAIN, images, labels, shrink=(1, 2))
    stage_fib25(FIB_TRAIN, images, labels)
    stage_seconds = time.perf_counter() - t0
    job = starter_job(work)
    (work / "starter_job.json").write_text(job.to_json() + "\n")
    load_before = load_average()
    cancel = CancelToken()

    def progress(event: Event) -> None:
        log_event(event)
        if (args.stop_after_epoch and event.kind == "metric" and event.message == "epoch"
                and event.data["epoch"] >= args.stop_after_epoch):
            cancel.cancel()  # the trainer stops before the next iteration, epoch saved

    t = time.perf_counter()
    with contextlib.suppress(Cancelled):  # --stop-after-epoch
        run_training(job, progress=progress, cancel=cancel)
    seconds = time.perf_counter() - t
    best = load_checkpoint(job.best_path)
    return {"bench": "train_starter", "step": "train", "job": str(work / "starter_job.json"),
            **ship(job.best_path, Path(args.ship)),
            "checkpoint": str(job.best_path), "best": best.best,
            "device": device_description(pick_device(job.device)),
            "torch_threads": torch.get_num_threads(),
            "stage_seconds": round(stage_seconds, 1), "train_seconds": round(seconds),
            "iterations": len(best.history) * (PATCHES_PER_EPOCH // BATCH),
            "load_average_before": load_before, "load_average_after": load_average(),
            "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                        for h in best.history]}


def ship(checkpoint: str | Path, out: Path) -> dict:
    """Write ``checkpoint`` as the package's starter model: without the optimizer state and
    with float16 weights (the network loads them into float32), which quarters the file."""
    ck = load_checkpoint(checkpoint)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    save_checkpoint(out, replace(ck, state_dict=half, optimizer=None, scheduler=None,
                                 weights_sha256=""))
    return {"shipped": str(out), "from": str(checkpoint), "size_bytes": out.stat().st_size,
            "weights": "float16"}


def evaluate(checkpoint: str, images: Path, labels: Path, label_format: str, out: Path,
             device: str) -> dict:
    """Mean whole-section V_rand / pixel error of the ``evaluate`` job over a folder."""
    files = [str(p) for p in L.list_images(images)]
    rows = run_evaluation(EvaluateJob(checkpoint=checkpoint, images=files, label_dir=str(labels),
                                      label_format=label_format, out=str(out), device=device,
                                      precision="fp32")).rows
    mean = next(r for r in rows if r["image"] == "mean")
    return {"v_rand": round(mean["v_rand"], 4), "pixel_error": round(mean["pixel_error"], 4),
            "v_rand_per_image": [round(r["v_rand"], 4) for r in rows if r["image"] != "mean"]}


def evaluate_all(args) -> dict:
    work = Path(args.work)
    checkpoint = args.checkpoint
    isbi_test = (work / "isbi_test" / "images", work / "isbi_test" / "labels")
    fib_test = (work / "fib_test" / "images", work / "fib_test" / "labels")
    tune = (work / "isbi_finetune" / "images", work / "isbi_finetune" / "labels")
    stage_isbi(ISBI_TEST, *isbi_test)
    stage_isbi(ISBI_FINETUNE, *tune)
    stage_fib25(FIB_TEST, *fib_test)

    def scores(name: str, ckpt: str) -> dict:
        return {"isbi_15_19": evaluate(ckpt, *isbi_test, "classes", work / "eval" / name / "isbi",
                                       args.device),
                "fib25_200_249": evaluate(ckpt, *fib_test, "classes",
                                          work / "eval" / name / "fib25", args.device)}

    t0 = time.perf_counter()
    load = load_average()
    table = {"starter": scores("starter", checkpoint)} if "starter" in args.runs else {}
    # the `membrane train` defaults (every augmentation, batch 8, 256^2 patches), one epoch
    common = dict(image_dir=str(tune[0]), label_dir=str(tune[1]), label_format="classes",
                  out_dir=str(work / "runs"), epochs=1, device=args.device, val_fraction=0.0,
                  patches_per_epoch=args.finetune_iterations * 8, batch_size=8,
                  voxel_size=[50.0, 4.0, 4.0])
    runs = {"finetuned": TrainJob(name="finetuned", pretrained=checkpoint, **common),
            "validated": TrainJob(name="validated", pretrained=checkpoint,
                                  **{**common, "val_fraction": TrainJob.val_fraction}),
            "scratch": TrainJob(name="scratch", **common)}
    for name in (n for n in runs if n in args.runs):
        t = time.perf_counter()
        result = run_training(runs[name], progress=log_event)
        table[name] = {**scores(name, str(result.best_path)),
                       "train_seconds": round(time.perf_counter() - t, 1),
                       "adapt_bn": load_checkpoint(result.best_path).adapt_bn}
    ck = load_checkpoint(checkpoint)
    return {"bench": "train_starter", "step": "evaluate", "checkpoint": checkpoint,
            "checkpoint_sha256": ck.digest(),
            "device": device_description(pick_device(args.device)),
            "torch_threads": torch.get_num_threads(),
            "finetune": {"data": "isbi2012 00-02", "iterations": args.finetune_iterations,
                         "batch": 8, "patch": 256, "augmentations": "all (the default)",
                         "idle_cpu_minutes": round(args.finetune_iterations
                                                  / IDLE_ITERATIONS_PER_MINUTE, 2),
                         "scratch": "the same iterations from a fresh network"},
            "evaluation": "membrane evaluate: whole sections, watershed at threshold 0.5, mean "
                          "V_rand (1 = perfect) and pixel error",
            "results": table, "load_average_before": load, "load_average_after": load_average(),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("train", "ship", "evaluate"))
    ap.add_argument("--work", required=True, help="folder for staged data, runs and pictures")
    ap.add_argument("--checkpoint", default="starter", help="ship: the trained checkpoint; "
                    "evaluate: the checkpoint to score")
    ap.add_argument("--ship", default=str(starter_path()), help="train, ship: where the "
                    "starter model goes (default: the package's)")
    ap.add_argument("--finetune-iterations", type=int, default=FINETUNE_ITERATIONS)
    ap.add_argument("--runs", default="starter,finetuned,validated,scratch",
                    type=lambda t: t.split(","), help="evaluate: which of starter (unchanged), "
                    "finetuned, validated (the membrane train defaults), scratch")
    ap.add_argument("--stop-after-epoch", type=int, default=None, help="train: stop the "
                    f"{EPOCHS}-epoch run (cosine schedule) after this epoch and ship its best")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    missing = [str(p) for p in (ISBI, FIB) if not p.is_dir()]
    if missing:
        print(json.dumps({"bench": "train_starter", "skipped": f"data not found: {missing}"}))
        return
    torch.set_num_threads(args.threads)
    if args.step == "ship":
        out = ship(args.checkpoint, Path(args.ship))
    else:
        out = train(args) if args.step == "train" else evaluate_all(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
