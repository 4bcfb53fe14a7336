"""The job layer: every registered kind runs from its JSON spec, through the CLI's
`membrane run` and through the Python API, with the same outputs; bad specs are one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from predict_support import folder_bytes
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import write_png
from membrane_py.events import Event
from membrane_py.ffn.checkpoint import load_ffn
from membrane_py.jobs import KINDS, SpecError, load_job, run, spec_from_dict
from membrane_py.train.checkpoint import load_checkpoint
from membrane_py.volumes.synthetic import make_synthetic

#: files that record where they were written (absolute output paths), so they differ
#: between two runs into two folders by design; everything else must be byte-identical
RECORDS_PATHS = {"manifest.json", "job_identity.json"}
FFN_VOLUME = "synthetic:12x64x64:1"
FFN_MODEL = {"depth": 1, "features": 4, "fov": [5, 9, 9], "deltas": [2, 2, 2]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, vast_server):
    """EM and instance-label folders of the server's synthetic volume, and one spec per kind
    (the specs of later steps use what earlier steps write into the same output root)."""
    root = tmp_path_factory.mktemp("jobs")
    s = make_synthetic((3, 128, 128), seed=0)
    for z in range(3):
        write_png(root / "em" / f"s{z}.png", s.em[z])
        write_png(root / "ids" / f"s{z}.png", s.instances[z].astype(np.uint16))
    vast = f"vast://{vast_server.host}:{vast_server.port}"
    specs = {
        "gt": {"kind": "gt", "conversion": "membrane", "input": "{root}/ids",
               "output": "{out}/gt", "thickness": 2},
        "patches": {"kind": "patches", "images": "{root}/em", "labels": "{root}/gt",
                    "out_images": "{out}/pi", "out_labels": "{out}/pl", "patch_size": 32,
                    "density": 400.0},
        "train": {"kind": "train", "image_dir": "{root}/em", "label_dir": "{root}/gt",
                  "out_dir": "{out}/runs", "name": "net", "label_format": "classes",
                  "patch_size": 32, "patches_per_epoch": 4, "val_patches": 2, "epochs": 1,
                  "batch_size": 2, "depth": 2, "base_filters": 4, "norm": "none",
                  "device": "cpu"},
        "evaluate": {"kind": "evaluate", "checkpoint": "{root}/runs/net.pt",
                     "images": ["{root}/em/s0.png"], "label_dir": "{root}/gt",
                     "label_format": "classes", "out": "{out}/eval", "device": "cpu"},
        "export-onnx": {"kind": "export-onnx", "checkpoint": "{root}/runs/net.pt",
                        "out": "{out}/net.onnx", "check": False},
        "predict": {"kind": "predict", "checkpoint": "{root}/runs/net.pt", "source": vast,
                    "out": "{out}/pred", "region": {"mode": "box", "box": [0, 255, 0, 127, 1, 2]},
                    "chunk": [2, 128, 128], "tile": 128, "margin": 16, "skip_blank": False},
        "follow": {"kind": "follow", "predict": {
            "checkpoint": "{root}/runs/net.pt", "source": vast, "out": "{out}/follow",
            "tile": 128, "margin": 16, "skip_blank": False}, "viewport": [128, 128],
            "sections": 0, "margin": 0, "max_seconds": 8.0},
        "instances": {"kind": "instances", "sources": ["{root}/pred/probability.vsvi"],
                      "output": "{out}/cells", "box": [0, 255, 0, 127, 1, 2]},
        "paint": {"kind": "paint", "source": "{root}/pred/probability.vsvi", "vast": vast,
                  "mode": "mask", "region": {"mode": "box", "box": [0, 63, 0, 63, 1, 1]},
                  "threshold": 0.0, "save": False},
        "fill": {"kind": "fill", "source": "{root}/pred/probability.vsvi", "vast": vast,
                 "seed": [40, 40, 1], "threshold": 1.0, "max_size": 32, "save": False},
        "suggest": {"kind": "suggest", "checkpoint": "{root}/runs/net.pt", "source": vast,
                    "out": "{out}/suggest", "box": [0, 127, 0, 127, 1, 2], "k": 2, "size": 32,
                    "tta": 1, "device": "cpu"},
        "ffn-prep": {"kind": "ffn-prep", "labels": FFN_VOLUME, "output": "{out}/coords.npz",
                     "radius": [2, 4, 4], "margin": [4, 6, 6], "min_size": 50,
                     "max_per_partition": 20},
        "ffn-train": {"kind": "ffn-train", "image": FFN_VOLUME, "labels": FFN_VOLUME,
                      "coordinates": "{root}/coords.npz", "output": "{out}/ffn.pt",
                      "model": FFN_MODEL, "steps": 2, "batch_size": 2, "device": "cpu"},
        "ffn-infer": {"kind": "ffn-infer", "image": FFN_VOLUME, "checkpoint": "{root}/ffn.pt",
                      "output": "{out}/neurons", "box": [0, 31, 0, 31, 0, 11],
                      "options": {"min_segment_size": 1}, "device": "cpu"},
    }
    return root, specs


def _spec(template: dict, root: Path, out: Path):
    """The spec with {root} (earlier steps' outputs) and {out} (this run's folder) filled,
    read back from JSON text the way `membrane run` reads a job file."""
    text = json.dumps(template).replace("{root}", str(root)).replace("{out}", str(out))
    return spec_from_dict(json.loads(text))


def _outputs(kind: str, folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in folder_bytes(folder).items()
            if Path(k).name not in RECORDS_PATHS
            and not (kind in ("train", "ffn-train") and k.endswith(".pt"))
            and not k.endswith((".log", ".jsonl"))}


def test_every_kind_runs_from_json_through_cli_and_api_alike(workspace, tmp_path):
    root, specs = workspace
    assert set(specs) == set(KINDS), "a registered kind has no end-to-end run here"
    for kind, template in specs.items():
        events: list[Event] = []
        api = run(_spec(template, root, root), progress=events.append)
        assert api.to_dict() and json.dumps(api.to_dict())  # results are plain JSON
        assert events and all(e.kind in ("progress", "metric", "warning", "artifact", "log")
                              for e in events)
        job_file = tmp_path / f"{kind}.json"
        cli_out = tmp_path / kind
        job_file.write_text(_spec(template, root, cli_out).to_json())
        assert load_job(job_file).kind == kind
        r = CliRunner().invoke(app, ["run", str(job_file)])
        assert r.exit_code == 0, f"{kind}: {r.output}"
        if kind in ("paint", "fill"):  # they write into VAST: compare what was painted
            mine = {k: v for k, v in api.to_dict().items() if k not in ("layer", "segment",
                                                                          "mapping")}
            assert str(mine.get("voxels_written", mine.get("voxels"))) in r.output
            continue
        api_files = _outputs(kind, root) if kind not in ("train", "ffn-train") else {}
        if kind in ("train", "ffn-train"):  # checkpoints record their job's output path
            a, b = ((load_checkpoint(d / "runs" / "net.pt") if kind == "train"
                     else load_ffn(d / "ffn.pt")).state_dict for d in (root, cli_out))
            assert all(torch.equal(a[k], b[k]) for k in a), "training is not reproducible"
            continue
        cli_files = _outputs(kind, cli_out)
        assert cli_files, f"{kind} wrote nothing"
        for name, data in cli_files.items():
            if name.endswith(".npz"):  # zip members carry their write time: compare arrays
                a, b = (np.load(io.BytesIO(d)) for d in (api_files[name], data))
                assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "job")
                continue
            assert api_files.get(name) == data, f"{kind}: {name} differs between CLI and API"


def test_result_and_events_are_json(workspace):
    root, specs = workspace
    spec = _spec(specs["gt"], root, root / "again")
    events: list[Event] = []
    result = run(spec, progress=events.append)
    assert result.to_dict()["files"] == [str(p) for p in result.files]
    for e in events:
        assert Event.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    assert events[-1].kind == "artifact" and events[-1].data["path"] == str(root / "again" / "gt")


@pytest.mark.parametrize(("change", "message"), [
    ({"treshold": 0.5}, "unknown key 'treshold'; accepted keys: checkpoint, source"),
    ({"mip": "zero"}, "predict job.mip must be an integer, got 'zero'"),
    ({"region": {"mode": "box", "bx": [1]}}, "predict job.region: unknown key 'bx'"),
    ({"region": {"mode": "box", "box": [0, 1, 0, 1, 0]}}, "box is six integers"),
    ({"pyramid": "yes"}, "predict job.pyramid must be true or false"),
    ({"outputs": "probability"}, "predict job.outputs must be a list"),
    ({"checkpoint": None}, "predict job.checkpoint must be a string"),
])
def test_bad_specs_are_one_line(change, message):
    d = {"kind": "predict", "checkpoint": "m.pt", **change}
    with pytest.raises(SpecError) as err:
        spec_from_dict(d)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_fields_and_kinds(tmp_path):
    with pytest.raises(SpecError, match="missing required key 'checkpoint'"):
        spec_from_dict({"kind": "predict"})
    with pytest.raises(SpecError, match="unknown job kind 'segmentation'; known kinds: gt"):
        spec_from_dict({"kind": "segmentation"})
    with pytest.raises(SpecError, match="with a 'kind' key"):
        spec_from_dict({"checkpoint": "m.pt"})
    for text, expect in (("{not json", "not a JSON job file"),
                         ('{"kind": "fill"}', "missing required key 'source'"),
                         ('{"kind": "gt", "conversion": "x", "input": "a", "output": "b"}',
                          "conversion must be one of")):
        path = tmp_path / "job.json"
        path.write_text(text)
        r = CliRunner().invoke(app, ["run", str(path)])
        assert r.exit_code == 2 and expect in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["run", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "job file not found" in r.output


def test_save_job_writes_what_run_reads(tmp_path, workspace):
    root, _ = workspace
    job = tmp_path / "gt.json"
    r = CliRunner().invoke(app, ["gt", "membrane", str(root / "ids"), str(tmp_path / "gt"),
                                 "--thickness", "2", "--save-job", str(job)])
    assert r.exit_code == 0, r.output
    saved = json.loads(job.read_text())
    assert saved["kind"] == "gt" and saved["thickness"] == 2
    assert folder_bytes(tmp_path / "gt") == folder_bytes(root / "gt")
