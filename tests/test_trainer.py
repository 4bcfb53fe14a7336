"""A small U-Net really trains on the synthetic volume (CPU), checkpoints round-trip, and an
interrupted run resumes."""

import numpy as np
import pytest
import torch

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.events import Cancelled, CancelToken
from membrane_py.train.checkpoint import load_checkpoint, save_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.trainer import split_by_image, train_model
from tests.train_support import PATCH, SectionPatches


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), name="t", depth=2, base_filters=8, patch_size=PATCH,
                batch_size=4, epochs=3, lr=3e-3, log_every=1, seed=1)
    return TrainJob(**{**base, **kw})


def test_split_by_image_is_disjoint_and_seeded():
    train, val = split_by_image(20, 0.3, seed=3)
    assert len(val) == 6 and not set(train) & set(val) and sorted(train + val) == list(range(20))
    assert split_by_image(20, 0.3, seed=3) == (train, val)
    assert split_by_image(2, 0.1, 0)[1] != []  # at least one validation image


def test_training_lowers_loss_and_checkpoint_round_trips(tmp_path):
    torch.set_num_threads(2)
    events = []
    cfg = _cfg(tmp_path, schedule="step", step_epochs=2, step_factor=0.5)
    res = train_model(SectionPatches([0, 1, 2], 32, 0), SectionPatches([3], 8, 1), cfg,
                      progress=events.append)
    iter_losses = [e.data["loss"] for e in events
                   if e.kind == "metric" and e.message == "iteration"]
    assert len(iter_losses) == 24
    assert np.mean(iter_losses[-4:]) < 0.8 * np.mean(iter_losses[:4])
    epochs = [e for e in events if e.kind == "metric" and e.message == "epoch"]
    assert [e.data["epoch"] for e in epochs] == [1, 2, 3]
    assert all("val_loss" in e.data and "val_v_rand" in e.data for e in epochs)
    assert res.history[-1]["lr"] == pytest.approx(3e-3 * 0.5)  # stepped after epoch 2
    assert (tmp_path / "t.log").read_text().count("epoch ") == 3
    assert "UNET Network Depth: 2" in (tmp_path / "t.log").read_text()
    assert (tmp_path / "t.metrics.jsonl").read_text().count('"kind": "epoch"') == 3

    raw = torch.load(res.best_path, weights_only=True)
    assert raw["format"] == "membrane-py-checkpoint" and raw["version"] == 1
    assert raw["preprocess"] == PreprocessConfig().to_dict() and raw["patch_size"] == PATCH
    ck = load_checkpoint(res.last_path)
    assert ck.epoch == 3 and len(ck.history) == 3 and ck.class_names == ["non-membrane", "membrane"]
    x = SectionPatches([3], 1, 5)[0][0][None]
    save_checkpoint(tmp_path / "copy.pt", ck)
    with torch.no_grad():
        a = ck.build_model()(x)
        b = load_checkpoint(tmp_path / "copy.pt").build_model()(x)
    assert torch.equal(a, b)


def test_cancel_saves_resumable_checkpoint_and_resume_finishes(tmp_path):
    torch.set_num_threads(2)
    token = CancelToken()

    def cancel_in_epoch_two(event):
        if event.kind == "metric" and event.message == "iteration" and event.done == 3:
            token.cancel()

    cfg = _cfg(tmp_path, epochs=2, optimizer="sgd", schedule="cosine")
    ds = SectionPatches([0, 1], 8, 0)
    assert cfg.resumed() is cfg  # nothing to continue from yet
    with pytest.raises(Cancelled):
        train_model(ds, None, cfg, progress=cancel_in_epoch_two, cancel=token)
    ck = load_checkpoint(cfg.last_path)
    assert ck.epoch == 1 and len(ck.history) == 1 and ck.optimizer is not None
    resumed = cfg.resumed()  # what a resubmission after a cancel or a crash runs
    assert resumed.resume == str(cfg.last_path) and resumed.resumed() is resumed
    res = train_model(ds, None, resumed)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert load_checkpoint(res.last_path).epoch == 2


def test_config_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="optimizer"):
        _cfg(tmp_path, optimizer="lbfgs")
    with pytest.raises(ValueError, match="multiple"):
        _cfg(tmp_path, patch_size=90)
    cfg = _cfg(tmp_path)
    assert TrainJob.from_dict(cfg.to_dict()) == cfg
