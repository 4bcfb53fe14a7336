"""PyTorch datasets over written patch folders or sampled on the fly from whole images.

The class datasets return ``(image float32 (1, H, W), label int64 (H, W))`` with 0 = unknown
and classes 1..K, use the same sampler and augmentation code as the patch writer, and draw
every random choice from ``numpy.random.default_rng([seed, index])``: deterministic per
(seed, index), independent of DataLoader worker layout. :class:`AffinityPatchDataset`
samples a labelled volume for affinity training instead (2.5D input, affinity targets),
:class:`AffinityCubeDataset` the same in 3D cubes for a 3D network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from membrane_py.augment import labels as L
from membrane_py.augment.affinities import NEAREST, affinities, check_offsets
from membrane_py.augment.patches import pair_by_name, read_manifest
from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.augment.sampling import SaturatedSampler, cut_patch
from membrane_py.augment.transforms import AugmentConfig, augment_pair
from membrane_py.codes import decode_label_png, infer_n_classes


def _to_tensors(image: np.ndarray, label: np.ndarray, cfg: PreprocessConfig):
    x = torch.from_numpy(np.ascontiguousarray(preprocess(image, cfg))[None])
    y = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
    return x, y


class PatchDataset(Dataset):
    """Patch pairs from an image folder and a label folder (ours or mEMbrain's), paired by name.

    K comes from ``n_classes``, else the folders' manifest.json, else the smallest K whose
    PNG codes cover every label value seen.
    """

    def __init__(self, image_dir: str | Path, label_dir: str | Path,
                 preprocess: PreprocessConfig, augment: AugmentConfig | None = None,
                 seed: int = 0, n_classes: int | None = None) -> None:
        self.pairs = pair_by_name(L.list_images(image_dir), L.list_images(label_dir))
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        manifest = read_manifest(label_dir, image_dir)
        if n_classes is None and manifest is not None:
            n_classes = int(manifest["n_classes"])
        if n_classes is None:
            seen = np.unique(np.concatenate([np.unique(L.read_image(p)) for _, p in self.pairs]))
            n_classes = infer_n_classes(seen)
        self.n_classes = n_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        img_path, lab_path = self.pairs[index]
        image = L.read_image(img_path)
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"{img_path}: patch must be 8-bit grayscale, got {image.dtype} "
                             f"{image.shape}")
        label = decode_label_png(L.read_image(lab_path), self.n_classes)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, index])
            image, label, _ = augment_pair(image, label.astype(np.uint16), self.augment, rng)
        return _to_tensors(image, label, self.preprocess)


class OnTheFlyPatchDataset(Dataset):
    """``length`` saturated patches drawn on the fly from whole (image, label) pairs.

    Images are picked in proportion to their valid-centre counts, so each valid centre is
    equally likely; poses and augmentations follow (seed, index).
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], patch_size: int,
                 length: int, preprocess: PreprocessConfig,
                 augment: AugmentConfig | None = None, seed: int = 0,
                 rotate: bool = True, angle_step: float = 5.0) -> None:
        if len(images) != len(labels) or not images:
            raise ValueError(f"need as many label images as EM images (>= 1), got "
                             f"{len(images)} and {len(labels)}")
        for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
            if im.dtype != np.uint8 or im.ndim != 2 or im.shape != lab.shape:
                raise ValueError(f"pair {i}: need a uint8 (y, x) image and a label of the same "
                                 f"shape, got {im.dtype} {im.shape} and {lab.shape}")
        self.images = images
        self.samplers = [SaturatedSampler(lab, patch_size, rotate, angle_step) for lab in labels]
        counts = np.array([s.n_valid for s in self.samplers], dtype=np.float64)
        if counts.sum() == 0:
            raise ValueError(f"no {patch_size}x{patch_size} patch fits inside the annotated "
                             "pixels of any image")
        self.weights = counts / counts.sum()
        self.patch_size = patch_size
        self.length = length
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.n_classes = max(int(lab.max()) for lab in labels)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        for _ in range(1000):
            k = int(rng.choice(len(self.samplers), p=self.weights))
            sampler = self.samplers[k]
            pose = sampler.pose_at(int(rng.choice(sampler.centres)), rng)
            if pose is not None:
                break
        else:
            raise RuntimeError("no saturated pose found in 1000 candidate centres")
        image = cut_patch(self.images[k], pose, self.patch_size, nearest=False)
        label = cut_patch(sampler.labels, pose, self.patch_size, nearest=True)
        if self.augment is not None:
            image, label, _ = augment_pair(image, label, self.augment, rng)
        return _to_tensors(image, label, self.preprocess)


class AffinityPatchDataset(Dataset):
    """Random 2.5D samples of an EM volume with instance labels, for affinity training.

    Item ``i`` is (image float32 (2 * context + 1, P, P), target uint8 (C, P, P)): a random
    section ``z`` and window, EM of sections ``z - context .. z + context`` (clamped at the
    volume's ends) preprocessed as prediction will, and the affinities of section ``z``
    (:func:`affinities` of the labels of ``z - max dz .. z``). Samples are flipped and
    transposed in (y, x) at random when ``augment``; the labels are transformed before the
    affinities are computed, so the x and y channels stay right. Deterministic per
    ``(seed, i)``.
    """

    def __init__(self, em: np.ndarray, labels: np.ndarray, patch_size: int, length: int,
                 preprocessing: PreprocessConfig, context: int = 1,
                 offsets: Sequence[Sequence[int]] = NEAREST, augment: bool = True,
                 seed: int = 0) -> None:
        if em.shape != labels.shape or em.ndim != 3:
            raise ValueError(f"EM {em.shape} and labels {labels.shape} must be one (z, y, x) "
                             "shape")
        if min(em.shape[1:]) < patch_size:
            raise ValueError(f"patch_size {patch_size} exceeds the sections {em.shape[1:]}")
        self.offsets = check_offsets(offsets)
        self.reach = max(d[0] for d in self.offsets)
        if em.shape[0] <= self.reach:
            raise ValueError(f"{em.shape[0]} sections are too few for z offsets of "
                             f"{self.reach}")
        self.em = preprocess(em, preprocessing).astype(np.float32, copy=False)
        self.labels = labels
        self.patch_size, self.length, self.context = patch_size, length, context
        self.augment, self.seed = augment, seed
        self.preprocess = preprocessing
        self.n_classes = len(self.offsets)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, i))
        p, (nz, ny, nx) = self.patch_size, self.em.shape
        z = int(rng.integers(self.reach, nz))
        y, x = int(rng.integers(0, ny - p + 1)), int(rng.integers(0, nx - p + 1))
        zs = np.clip(np.arange(z - self.context, z + self.context + 1), 0, nz - 1)
        image = self.em[zs, y:y + p, x:x + p]
        lab = self.labels[z - self.reach:z + 1, y:y + p, x:x + p]
        if self.augment:
            k = rng.integers(0, 8)
            if k & 1:
                image, lab = image[:, ::-1], lab[:, ::-1]
            if k & 2:
                image, lab = image[:, :, ::-1], lab[:, :, ::-1]
            if k & 4:
                image, lab = image.transpose(0, 2, 1), lab.transpose(0, 2, 1)
        target = affinities(np.ascontiguousarray(lab), self.offsets)[:, -1]
        return np.ascontiguousarray(image), np.ascontiguousarray(target)


class AffinityCubeDataset(Dataset):
    """Random 3D samples of an EM volume with instance labels, for a 3D network
    (:mod:`membrane_py.models.unet3d`).

    Item ``i`` is (image float32 (1, P, P, P), target uint8 (C, P, P, P)): a random cube,
    preprocessed, and its affinities computed from labels cut with a margin of the longest
    offset on every side, so the cube's faces are known too. With ``augment`` image and
    labels are flipped in z, y and x and transposed in (y, x) at random before the
    affinities are computed (no z permutation: voxels need not be cubes). Deterministic per
    ``(seed, i)``.
    """

    def __init__(self, em: np.ndarray, labels: np.ndarray, patch_size: int, length: int,
                 preprocessing: PreprocessConfig, offsets: Sequence[Sequence[int]] = NEAREST,
                 augment: bool = True, seed: int = 0) -> None:
        if em.shape != labels.shape or em.ndim != 3:
            raise ValueError(f"EM {em.shape} and labels {labels.shape} must be one (z, y, x) "
                             "shape")
        self.offsets = check_offsets(offsets)
        self.margin = max(max(d) for d in self.offsets)
        if min(em.shape) < patch_size + 2 * self.margin:
            raise ValueError(f"cubes of {patch_size} plus {self.margin} voxels on each side "
                             f"(the longest offset) do not fit in the volume {em.shape}")
        self.em = preprocess(em, preprocessing).astype(np.float32, copy=False)
        self.labels = labels
        self.patch_size, self.length, self.augment, self.seed = patch_size, length, augment, seed
        self.preprocess = preprocessing
        self.n_classes = len(self.offsets)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, i))
        p, m = self.patch_size, self.margin
        start = [int(rng.integers(m, s - p - m + 1)) for s in self.em.shape]
        image = self.em[tuple(slice(a, a + p) for a in start)]
        lab = self.labels[tuple(slice(a - m, a + p + m) for a in start)]
        if self.augment:
            k = int(rng.integers(0, 16))
            flips = tuple(axis for axis in range(3) if k & (1 << axis))
            if flips:
                image, lab = np.flip(image, flips), np.flip(lab, flips)
            if k & 8:
                image, lab = image.transpose(0, 2, 1), lab.transpose(0, 2, 1)
        target = affinities(np.ascontiguousarray(lab), self.offsets)
        target = target[(slice(None), *(slice(m, m + p),) * 3)]
        return np.ascontiguousarray(image[None]), np.ascontiguousarray(target)
