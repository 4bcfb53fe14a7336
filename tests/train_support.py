"""A synthetic patch dataset the training tests share."""

import numpy as np
import torch
from torch.utils.data import Dataset

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.volumes.synthetic import make_synthetic

PATCH = 64


class SectionPatches(Dataset):
    """Deterministic 64^2 crops of synthetic sections; a corner of each label is unknown."""

    n_classes = 2

    def __init__(self, sections: list[int], length: int, seed: int) -> None:
        syn = make_synthetic((4, 128, 128), seed=0)
        self.em, self.lab = syn.em[sections], syn.membranes[sections].astype(np.int64)
        self.length, self.seed = length, seed
        self.preprocess = PreprocessConfig()

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        z = rng.integers(len(self.em))
        y, x = rng.integers(0, 128 - PATCH, 2)
        img = self.em[z, y:y + PATCH, x:x + PATCH]
        lab = self.lab[z, y:y + PATCH, x:x + PATCH].copy()
        lab[:8, :8] = 0
        return torch.from_numpy(preprocess(img, self.preprocess)[None]), torch.from_numpy(lab)
