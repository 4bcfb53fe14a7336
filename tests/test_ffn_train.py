"""FFN training data preparation and a tiny training run on the synthetic volume."""

from __future__ import annotations

import numpy as np
import pytest

from membrane_py.events import Event
from membrane_py.ffn.checkpoint import load_ffn
from membrane_py.ffn.prep import EXCLUDED, FFNPrepJob, partitions, run_ffn_prep
from membrane_py.ffn.train import FFNTrainJob, run_ffn_train
from membrane_py.jobs import registry
from membrane_py.models.ffn import FFNConfig

SYNTH = "synthetic:20x64x64:3"
TINY = FFNConfig(depth=2, features=8, fov=(9, 9, 9), deltas=(2, 2, 2))


def test_partitions_by_local_mass():
    labels = np.zeros((12, 12, 12), np.int32)
    labels[:, :, :6] = 1  # a big half: deep voxels see mostly their own object
    labels[5:7, 5:7, 8:10] = 2  # 8 voxels: dust at min_size 10
    parts = partitions(labels, (2, 2, 2), [0.25, 0.5, 0.75], min_size=10)
    inner = parts[2:-2, 2:-2, 2:-2]
    assert (parts[:2] == EXCLUDED).all() and (parts[:, :, -2:] == EXCLUDED).all()
    assert EXCLUDED not in inner
    # deep inside object 1 the whole 5^3 box is its own: the top partition (len + 1 = 4)
    assert parts[6, 6, 2] == 4
    # at its face (x = 5) 3 of 5 columns are its own: fraction 0.6 -> partition 3
    assert parts[6, 6, 5] == 3
    # background and the dust object are partition 0
    assert parts[6, 6, 8] == 0 and parts[5, 5, 8] == 0


def test_prep_and_tiny_training(tmp_path):
    coords = tmp_path / "coords.npz"
    prep = run_ffn_prep(FFNPrepJob(labels=SYNTH, output=str(coords), radius=(4, 4, 4),
                                   margin=(6, 6, 6), min_size=50, max_per_partition=200))
    with np.load(coords) as d:
        c, p = d["coords"], d["partition"]
    assert prep.coordinates == len(c) and len(np.unique(p)) >= 3
    assert (c >= 6).all() and (c[:, 1:] < 58).all() and (c[:, 0] < 14).all()
    events = []
    job = FFNTrainJob(image=SYNTH, labels=SYNTH, coordinates=str(coords),
                      output=str(tmp_path / "ffn.pt"), model=TINY, steps=60, batch_size=4,
                      optimizer="adam", learning_rate=0.003, checkpoint_every=25, seed=1)
    result = registry.run(job, events.append)
    losses = [e.data["loss"] for e in events if e.kind == "metric"]
    assert len(losses) == 60 and result.steps == 60 and result.examples == 240
    assert np.mean(losses[-15:]) < 0.8 * np.mean(losses[:15])  # it learns
    ckpt = load_ffn(result.path)
    assert ckpt.step == 60 and ckpt.config == TINY and ckpt.optimizer
    assert len(ckpt.history) == 60
    # resume: 10 more steps continue from the checkpoint (weights, optimiser, step)
    more = run_ffn_train(FFNTrainJob.from_dict({**job.to_dict(), "steps": 70}))
    assert more.steps == 70 and load_ffn(result.path).step == 70
    assert any(isinstance(e, Event) and e.kind == "artifact" for e in events)


def test_bad_training_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="ffn prep"):
        run_ffn_train(FFNTrainJob(image=SYNTH, labels=SYNTH, coordinates="nothere.npz",
                                  output=str(tmp_path / "m.pt"), model=TINY))
    with pytest.raises(ValueError, match="optimizer"):
        FFNTrainJob(image=SYNTH, labels=SYNTH, coordinates="c.npz", output="m.pt",
                    optimizer="lbfgs")
    with pytest.raises(ValueError, match=".npz"):
        FFNPrepJob(labels=SYNTH, output="coords.h5")
