"""Benchmark: saturated 256^2 patches per second from a 1024^2 image, rotation and every
augmentation on. Prints one JSON object."""

from __future__ import annotations

import json
import platform
import time

import numpy as np


def main(n: int = 400, patch: int = 256, size: int = 1024) -> dict:
    from membrane_py.augment.sampling import SaturatedSampler, cut_patch
    from membrane_py.augment.transforms import AugmentConfig, augment_pair
    from membrane_py.volumes.synthetic import make_synthetic

    s = make_synthetic((1, size, size), seed=0)
    image, labels = s.em[0], s.membranes[0].copy()
    labels[: size // 8] = 0  # some unknown pixels, so the saturation test has work to do
    cfg = AugmentConfig.all_on()
    t0 = time.perf_counter()
    sampler = SaturatedSampler(labels, patch, rotate=True)
    t_centres = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for pose in sampler.sample(n, rng):
        img = cut_patch(image, pose, patch, nearest=False)
        lab = cut_patch(sampler.labels, pose, patch, nearest=True)
        augment_pair(img, lab, cfg, rng)
    elapsed = time.perf_counter() - t0
    return {"benchmark": "patches", "patches_per_s": round(n / elapsed, 1), "n_patches": n,
            "patch_size": patch, "image_size": [size, size], "rotation": "any angle",
            "augmentations": cfg.enabled(), "valid_centres_s": round(t_centres, 3),
            "device": f"cpu ({platform.processor() or platform.machine()})"}


if __name__ == "__main__":
    print(json.dumps(main()))
