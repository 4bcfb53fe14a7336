"""Instance segmentation accuracy on real ground truth (one JSON object on stdout).

Datasets from ../shared/data (each skipped with a message when absent):

* ``fib25_sample2``: 250^3 FIB-SEM, 10 nm, ground-truth bodies (fragments mapped by
  ``transforms``);
* ``gala/train``, ``gala/test``: FIB-SEM crops with neuron ids;
* ``gala/snemi-mini``: labels with the membrane probability maps shipped beside them (a real
  classifier's output, membrane dark there, so it is inverted).

Membrane maps for the first three come from the ground truth itself (its boundaries as a
3-px band, blurred and with smooth noise): an upper bound on what a network delivers, not
a network's score. Each dataset is segmented three ways: 2D (per section), 3D by linking
the 2D segments across sections (default thresholds, and a strict overlap fraction of 0.8),
a 3D watershed, and the hierarchical agglomeration of the map's derived affinities
(``--mode agglomerate`` at thresholds 0.3, 0.5, 0.7; seeds per section for the anisotropic
snemi-mini). Scores (adapted Rand error, VI split and merge in bits, from
membrane_py.train.metrics) count voxels where the ground truth is
non-zero, after growing the segments over their 0 (membrane) pixels so they tile the
volume, as ISBI-style scoring expects; 2D scores are means over sections against each
section's connected ground-truth pieces.

    python bench/instances.py [--sections 250] [--h 0.05] [--min-size 70] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from skimage.measure import label as connected

from membrane_py.segment.affinity import (
    AgglomerationKnobs,
    boundary_affinities,
    segment_affinities,
)
from membrane_py.segment.agglomerate import AgglomerationConfig, agglomerate, watershed_3d
from membrane_py.segment.instances import (
    InstanceConfig,
    grow_into_membranes,
    membrane_map_from_labels,
    segment_stack,
    to_probability,
)
from membrane_py.train.metrics import rand_info_scores

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NOISE, BLUR, BAND = 0.1, 1.5, 3
KEYS = ("adapted_rand_error", "vi_split", "vi_merge")
STRICT = AgglomerationConfig(min_overlap_fraction=0.8)  # fewer merges, more splits


def load_fib25(sections: int) -> tuple[np.ndarray, None]:
    import h5py

    from membrane_py.volumes.hdf5 import gunzip_cached

    with h5py.File(gunzip_cached(DATA / "fib25_sample2" / "groundtruth.h5.gz")) as f:
        fragments = f["stack"][:sections].astype(np.int64)
        pairs = f["transforms"][()].astype(np.int64)
    lut = np.arange(max(int(fragments.max()), int(pairs[:, 0].max())) + 1)
    lut[pairs[:, 0]] = pairs[:, 1]
    return lut[fragments], None


def load_gala(split: str, sections: int) -> tuple[np.ndarray, None]:
    import h5py

    with h5py.File(DATA / "gala" / f"{split}-gt.lzf.h5") as f:
        return f["stack"][:sections].astype(np.int64), None


def load_snemi_mini(sections: int) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    folder = DATA / "gala" / "snemi-mini"
    gt = tifffile.imread(folder / "train-labels.tif")[:sections].astype(np.int64)
    prob = to_probability(tifffile.imread(folder / "train-probabilities.tif")[:sections],
                          invert=True)
    return gt, prob


DATASETS = {
    "fib25_sample2": (DATA / "fib25_sample2", load_fib25),
    "gala_train": (DATA / "gala", lambda n: load_gala("train", n)),
    "gala_test": (DATA / "gala", lambda n: load_gala("test", n)),
    "gala_snemi_mini_shipped_probabilities": (DATA / "gala" / "snemi-mini", load_snemi_mini),
}


def scores(labels: np.ndarray, gt: np.ndarray, seconds: float) -> dict:
    s = rand_info_scores(labels, gt)
    return {**{k: round(s[k], 4) for k in KEYS}, "objects": int(len(np.unique(labels)) - 1),
            "seconds": round(seconds, 1)}


def scores_2d(labels: np.ndarray, gt: np.ndarray, seconds: float) -> dict:
    per = [rand_info_scores(labels[z], connected(gt[z], background=0, connectivity=1))
           for z in range(len(gt)) if gt[z].any()]
    return {**{k: round(float(np.mean([p[k] for p in per])), 4) for k in KEYS},
            "segments_per_section": round(float(np.mean([len(np.unique(x)) - 1
                                                         for x in labels])), 1),
            "seconds": round(seconds, 1)}


def run(gt: np.ndarray, prob: np.ndarray, cfg: InstanceConfig, agg: AgglomerationConfig,
        min_size_3d: int, anisotropic: bool = False) -> dict:
    t = time.perf_counter()
    segs = segment_stack(prob, cfg)
    t2d = time.perf_counter() - t
    out = {"2d": scores_2d(grow_into_membranes(segs, prob), gt, t2d)}
    for key, link in (("3d_linked_2d", agg), ("3d_linked_2d_strict", STRICT)):
        t = time.perf_counter()
        objects = agglomerate(segs, link)
        out[key] = scores(grow_into_membranes(objects, prob), gt, t2d + time.perf_counter() - t)
    t = time.perf_counter()
    ws = watershed_3d(prob, cfg, min_size_3d)
    out["3d_watershed"] = scores(grow_into_membranes(ws, prob), gt, time.perf_counter() - t)
    for threshold in (0.3, 0.5, 0.7):
        t = time.perf_counter()
        knobs = AgglomerationKnobs(threshold=threshold, sections=anisotropic)
        seg = segment_affinities(boundary_affinities(prob), knobs)
        out[f"3d_agglomerate_{threshold}"] = scores(grow_into_membranes(seg, prob), gt,
                                                    time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", type=int, default=250, help="use at most this many sections")
    ap.add_argument("--h", type=float, default=InstanceConfig.h)
    ap.add_argument("--min-size", type=int, default=InstanceConfig.min_size)
    ap.add_argument("--min-size-3d", type=int, default=500)
    ap.add_argument("--only", nargs="*", choices=list(DATASETS), help="run these datasets only")
    args = ap.parse_args()
    cfg = InstanceConfig(h=args.h, min_size=args.min_size)
    agg = AgglomerationConfig()
    result = {
        "bench": "instances",
        "membranes": f"ground truth boundaries ({BAND}-px band, Gaussian blur {BLUR} px, smooth "
                     f"noise sd {NOISE}): an upper bound, not a network's output; except "
                     "gala_snemi_mini, which uses the real probability maps shipped with it",
        "scoring": "voxels with ground truth > 0; segments grown over their 0 pixels first; "
                   "2D = mean over sections against connected ground-truth pieces",
        "instance_config": asdict(cfg), "agglomeration": asdict(agg),
        "agglomeration_strict": asdict(STRICT),
        "min_size_3d": args.min_size_3d, "datasets": {},
    }
    for name, (folder, load) in DATASETS.items():
        if args.only and name not in args.only:
            continue
        if not folder.is_dir():
            result["datasets"][name] = {"skipped": f"{folder} not found"}
            continue
        gt, prob = load(args.sections)
        if prob is None:
            prob = membrane_map_from_labels(gt, BAND, BLUR, NOISE, seed=0)
        entry = {"shape_zyx": list(gt.shape), "objects_in_ground_truth":
                 int(len(np.unique(gt[gt > 0])))}
        entry.update(run(gt, prob, cfg, agg, args.min_size_3d, anisotropic="snemi" in name))
        result["datasets"][name] = entry
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
