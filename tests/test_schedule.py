"""Learning-rate schedules: the cosine anneals by iterations or by the time budget, whichever
runs out first; a run resumed with more epochs climbs back to the share not yet spent."""

import pytest
import torch

from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.schedule import Schedule
from membrane_py.train.trainer import train_model
from tests.train_support import PATCH, SectionPatches


def test_cosine_follows_the_larger_share_of_iterations_and_time():
    s = Schedule("cosine", [1e-3], total=100, budget=60.0)
    assert s.factor(0, 0, 0.0) == pytest.approx(1.0)
    assert s.factor(0, 50, 1.0) == pytest.approx(0.5)  # half the iterations
    assert s.factor(0, 10, 30.0) == pytest.approx(0.5)  # half the time
    assert s.factor(0, 10, 600.0) == pytest.approx(0.0)  # budget spent: annealed
    assert s.factor(0, 100, 0.0) == pytest.approx(0.0)
    assert Schedule("cosine", [1e-3], total=100).progress(10, 1e9) == pytest.approx(0.1)


def test_step_and_constant_schedules():
    step = Schedule("step", [1.0], total=10, step_epochs=2, step_factor=0.5)
    assert [step.factor(e, 0, 0.0) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    assert Schedule("none", [1.0], total=10, budget=1.0).factor(3, 9, 9.0) == 1.0


def test_every_group_keeps_its_own_base_rate():
    s = Schedule("cosine", [2.0, 0.2], total=100)
    opt = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)]}], lr=1.0)
    s.apply(opt, 0, 50, 0.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 0.1])


def _iteration_lrs(events):
    return [e.data["lr"] for e in events if e.kind == "metric" and e.message == "iteration"]


def test_training_anneals_to_zero_and_a_resumed_run_continues(tmp_path):
    torch.set_num_threads(2)
    cfg = TrainJob(out_dir=str(tmp_path), name="c", depth=2, base_filters=8, patch_size=PATCH,
                   batch_size=4, epochs=2, lr=3e-3, log_every=1, seed=1, schedule="cosine")
    events = []
    res = train_model(SectionPatches([0, 1], 16, 0), None, cfg, progress=events.append)
    lrs = _iteration_lrs(events)
    assert len(lrs) == 8 and lrs[0] == pytest.approx(3e-3)
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] < 0.05 * 3e-3
    assert load_checkpoint(res.last_path).scheduler["progress"] == pytest.approx(1.0)

    more = TrainJob.from_dict({**cfg.to_dict(), "epochs": 4, "resume": str(res.last_path)})
    events = []
    train_model(SectionPatches([0, 1], 16, 0), None, more, progress=events.append)
    lrs = _iteration_lrs(events)
    assert len(lrs) == 8 and lrs[0] == pytest.approx(3e-3 * 0.5, rel=0.1)  # half spent
    assert lrs[-1] < 0.05 * 3e-3
