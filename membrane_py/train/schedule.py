"""Learning-rate schedules, set on the optimizer before every iteration.

``none`` keeps the learning rate; ``step`` multiplies it by ``step_factor`` every
``step_epochs`` epochs (mEMbrain's "piecewise"); ``cosine`` lowers it along half a cosine
to 0 at the end of the run. The end of a run is whichever comes first, its planned
iterations or its time budget (``--minutes``): progress is the larger of the two shares
spent, so a run stopped by its budget has still annealed (a constant rate leaves the
weights, and the batch-norm statistics, where the last noisy steps put them). Iterations
count from the start of the run, resumed epochs included, and time from the start of this
process, against its own budget: a run resumed after an interrupt continues near where it
stopped; one resumed with more epochs or minutes climbs back to the share not yet spent and
anneals again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Schedule:
    """What the learning rate of each optimizer group is at a point of a run."""

    kind: str
    #: the groups' learning rates at the start of the schedule
    base_lrs: list[float]
    #: planned iterations of the whole run (resumed epochs included)
    total: int
    #: seconds this process may train, None without a budget
    budget: float | None = None
    step_epochs: int = 2
    step_factor: float = 0.1

    def progress(self, done: int, elapsed: float) -> float:
        """Share of the run spent (0..1) after ``done`` iterations and ``elapsed`` seconds."""
        share = done / max(1, self.total)
        if self.budget:
            share = max(share, elapsed / self.budget)
        return min(1.0, share)

    def factor(self, epoch: int, done: int, elapsed: float) -> float:
        """Multiplier of the base learning rates in (0-based) ``epoch`` after ``done``
        iterations and ``elapsed`` seconds."""
        if self.kind == "step":
            return self.step_factor ** (epoch // self.step_epochs)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * self.progress(done, elapsed)))
        return 1.0

    def apply(self, opt: torch.optim.Optimizer, epoch: int, done: int,
              elapsed: float) -> None:
        """Set every group's learning rate for the next iteration."""
        f = self.factor(epoch, done, elapsed)
        for group, base in zip(opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def state(self, done: int, elapsed: float) -> dict:
        """Where the schedule stands, as a checkpoint records it."""
        return {"kind": self.kind, "progress": self.progress(done, elapsed), "iteration": done}
