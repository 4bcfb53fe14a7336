"""Training speed toggles (issue 15, item 7): each trains with a falling loss, bf16 falls back
to fp32 where the CPU lacks it, the checkpoint and log record what ran, the CLI options
round-trip through --save-job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.jobs import load_job
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.device import cpu_has_bf16
from membrane_py.train.execution import prefetched, resolve_execution
from membrane_py.train.trainer import train_model
from membrane_py.volumes.synthetic import make_synthetic
from tests.train_support import PATCH, SectionPatches

CPU = torch.device("cpu")


OFF = dict(amp=False, channels_last=False, prefetch=False, compile=False)


# compile is left out: Inductor's compilation takes minutes on the shared 2-core test
# machine, past the suite's per-test limit
@pytest.mark.parametrize("toggle", [
    {}, {"amp": True}, {"channels_last": True}, {"prefetch": True}, {"threads": 1}],
    ids=["off", "amp", "channels_last", "prefetch", "threads"])
def test_each_toggle_trains_with_finite_falling_loss(tmp_path, toggle):
    if toggle.get("amp") and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16; the fallback is tested below")
    events = []
    cfg = TrainJob(out_dir=str(tmp_path), name="t", depth=2, base_filters=8, patch_size=PATCH,
                   batch_size=4, epochs=4, lr=3e-3, log_every=1, seed=1, device="cpu",
                   **{**OFF, **toggle})
    threads = torch.get_num_threads()
    res = train_model(SectionPatches([0, 1, 2], 16, 0), None, cfg, progress=events.append)
    losses = [e.data["loss"] for e in events if e.kind == "metric" and e.message == "iteration"]
    assert len(losses) == 16 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4])
    assert torch.get_num_threads() == threads  # the run's thread setting is undone
    recorded = load_checkpoint(res.last_path).train_config
    for key, value in {**OFF, **toggle}.items():
        assert recorded[key] == value


def test_bf16_falls_back_to_fp32_with_a_warning_where_the_cpu_lacks_it():
    asked = TrainJob(amp=True)
    run, warnings = resolve_execution(asked, CPU, cpu_bf16=False)
    assert not run.amp and len(warnings) == 1 and "trains in fp32" in warnings[0]
    run, warnings = resolve_execution(asked, CPU, cpu_bf16=True)
    assert run.amp and warnings == []
    for bf16 in (False, True):  # auto follows the hardware, silently
        run, warnings = resolve_execution(TrainJob(), CPU, cpu_bf16=bf16)
        assert run.amp is bf16 and warnings == []
    run, warnings = resolve_execution(TrainJob(amp=True), torch.device("mps"))
    assert not run.amp and "mps" in warnings[0]
    run, _ = resolve_execution(TrainJob(), CPU)
    assert not run.prefetch and run.channels_last and not run.compile


@pytest.mark.skipif(cpu_has_bf16(), reason="this CPU has bf16; the warning needs one without")
def test_training_on_a_cpu_without_bf16_warns_and_records_fp32(tmp_path):
    events = []
    cfg = TrainJob(out_dir=str(tmp_path), name="t", depth=2, base_filters=4, patch_size=PATCH,
                   batch_size=4, epochs=1, device="cpu", amp=True)
    res = train_model(SectionPatches([0, 1, 2], 4, 0), None, cfg, progress=events.append)
    assert any(e.kind == "warning" and "trains in fp32" in e.message for e in events)
    assert load_checkpoint(res.last_path).train_config["amp"] is False


def test_prefetch_thread_keeps_order_raises_errors_and_stops_on_break():
    assert list(prefetched(range(50), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(broken()))
    it = prefetched(iter(range(10**9)))
    assert next(it) == 0
    it.close()  # joins the thread; would hang if the producer ignored the stop


def test_bad_toggle_values_are_refused():
    with pytest.raises(ValueError, match="amp must be true, false or 'auto'"):
        TrainJob(amp="yes")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        TrainJob(threads=0)


def test_cli_toggles_round_trip_through_save_job_and_the_log_records_them(tmp_path):
    s = make_synthetic((3, 96, 96), seed=2)
    for z in range(3):
        write_png(tmp_path / "em" / f"s{z}.png", s.em[z])
        write_png(tmp_path / "gt" / f"s{z}.png", np.where(s.membranes[z] == 2, 0, 255)
                  .astype(np.uint8))
    job = tmp_path / "job.json"
    base = ["train", "--images", tmp_path / "em", "--labels", tmp_path / "gt", "--out",
            tmp_path / "run", "--depth", "2", "--base-filters", "4", "--patch-size", "32",
            "--patches-per-epoch", "8", "--val-patches", "4", "--epochs", "1", "--batch-size",
            "4", "--device", "cpu"]
    toggles = ["--no-amp", "--channels-last", "--prefetch", "--threads", "1"]
    r = CliRunner().invoke(app, [str(a) for a in base + toggles + ["--save-job", job]])
    assert r.exit_code == 0, r.output
    spec = json.loads(job.read_text())
    assert (spec["amp"], spec["channels_last"], spec["prefetch"], spec["compile"],
            spec["threads"]) == (False, True, True, False, 1)
    loaded = load_job(job)
    assert isinstance(loaded, TrainJob) and loaded.to_dict() == spec
    recorded = load_checkpoint(tmp_path / "run" / "unet.pt").train_config
    assert (recorded["amp"], recorded["channels_last"], recorded["threads"]) == (False, True, 1)
    assert ("Execution: fp32, channels-last, prefetch thread, eager, 1 threads"
            in (tmp_path / "run" / "unet.log").read_text())
    default = tmp_path / "default.json"
    r = CliRunner().invoke(app, [str(a) for a in base + ["--save-job", default]])
    assert r.exit_code == 0, r.output
    auto = json.loads(default.read_text())
    assert (auto["amp"], auto["channels_last"], auto["prefetch"], auto["compile"],
            auto["threads"]) == ("auto", "auto", False, False, None)
    recorded = load_checkpoint(tmp_path / "run" / "unet.pt").train_config
    assert recorded["amp"] is cpu_has_bf16() and recorded["channels_last"] is True
