"""Episodic memory: every training batch mixes the new data set with earlier ones.

Fine-tuning only on new data makes a network forget what it learned before ("catastrophic
forgetting"). Replaying a fixed share of each batch from the earlier data sets keeps the old
task in the loss. :func:`episodic_loader_parts` concatenates the data sets and returns a batch
sampler whose batches each hold exactly ``round(ratio * batch_size)`` memory samples.

This module imports only torch and numpy, so the trainer can use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Sampler


def split_batch(batch_size: int, ratio: float) -> tuple[int, int]:
    """(new, memory) samples per batch for a memory share ``ratio``; both must be >= 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"episodic ratio must be in (0, 1), got {ratio}")
    n_memory = round(ratio * batch_size)
    if not 1 <= n_memory <= batch_size - 1:
        raise ValueError(f"a batch of {batch_size} cannot hold a {ratio} share of memory samples "
                         "and at least one new sample; change the batch size or the ratio")
    return batch_size - n_memory, n_memory


class EpisodicBatchSampler(Sampler[list[int]]):
    """Index batches over ``ConcatDataset([new, *memory])``.

    Each batch holds ``B - m`` new samples and ``m = round(ratio * B)`` memory samples; memory
    slots go round-robin over the memory data sets, so each earlier data set gets an equal share
    whatever its length. An epoch is one pass over the new data set in whole batches; memory
    samples are drawn from a reshuffled cycle of each memory set. Every epoch's order follows
    ``(seed, epoch)``.
    """

    def __init__(self, n_new: int, n_memory: Sequence[int], batch_size: int, ratio: float,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.n_fresh, self.n_replay = split_batch(batch_size, ratio)
        if n_new < self.n_fresh:
            raise ValueError(f"the new data set has {n_new} samples; a batch needs {self.n_fresh}")
        if not n_memory or min(n_memory) < 1:
            raise ValueError("episodic memory needs at least one non-empty earlier data set")
        self.n_new = n_new
        self.n_memory = list(n_memory)
        self.offsets = np.cumsum([n_new, *self.n_memory[:-1]])
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n_new // self.n_fresh

    def _order(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        fresh = self._order(self.n_new, rng)
        n_sets = len(self.n_memory)
        cycles = [self._order(n, rng) for n in self.n_memory]
        used = [0] * n_sets
        slot = 0
        for b in range(len(self)):
            batch = fresh[b * self.n_fresh:(b + 1) * self.n_fresh].tolist()
            for _ in range(self.n_replay):
                k = slot % n_sets
                slot += 1
                if used[k] == self.n_memory[k]:
                    cycles[k], used[k] = self._order(self.n_memory[k], rng), 0
                batch.append(int(self.offsets[k] + cycles[k][used[k]]))
                used[k] += 1
            yield batch


def episodic_loader_parts(new: Dataset, memory: Sequence[Dataset], batch_size: int,
                          ratio: float, shuffle: bool = True,
                          seed: int = 0) -> tuple[ConcatDataset, EpisodicBatchSampler]:
    """The dataset and ``batch_sampler`` for a DataLoader that replays ``memory``."""
    sampler = EpisodicBatchSampler(len(new), [len(m) for m in memory], batch_size, ratio,
                                   shuffle, seed)
    return ConcatDataset([new, *memory]), sampler
