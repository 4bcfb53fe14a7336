"""Checkpoint integrity: the weights digest catches bytes flipped inside a tensor, and every
kind of unusable file becomes one CheckpointError with a message naming the problem."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from predict_support import tiny_checkpoint

from membrane_py.infer.engine import load_predictor
from membrane_py.infer.onnx_backend import (
    METADATA_KEY,
    OnnxBackend,
    OnnxModelInfo,
    onnx_tensors_sha256,
)
from membrane_py.train.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    load_checkpoint,
    weights_sha256,
)
from membrane_py.transfer.onnx import export_onnx


def _tensor_span(path: Path) -> tuple[int, int]:
    """(offset, size) of the largest tensor's raw bytes inside a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename and
                    not i.filename.endswith("serialization_id")), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED  # torch stores tensors uncompressed
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_tensor_bytes_are_detected(tmp_path):
    path = tiny_checkpoint(tmp_path / "a.pt")
    start, size = _tensor_span(path)
    data = bytearray(path.read_bytes())
    mid = start + size // 2 - 32
    data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    # without the digest torch itself notices nothing
    assert isinstance(torch.load(bad, weights_only=True)["state_dict"], dict)
    with pytest.raises(CheckpointError, match=r"flipped\.pt is damaged.*re-copy it or retrain"):
        load_checkpoint(bad)
    assert load_checkpoint(path).state_dict  # the intact file still loads


def test_digest_is_stored_and_old_checkpoints_load_unchecked(tmp_path):
    path = tiny_checkpoint(tmp_path / "a.pt")
    d = torch.load(path, weights_only=True)
    assert d[DIGEST_KEY] == weights_sha256(d["state_dict"])
    del d[DIGEST_KEY]  # as written before the digest existed, then changed: no check possible
    next(iter(d["state_dict"].values())).add_(1.0)
    torch.save(d, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").state_dict.keys() == d["state_dict"].keys()


def test_digest_covers_names_dtypes_and_shapes():
    w = torch.arange(6, dtype=torch.float32)
    base = weights_sha256({"a": w})
    assert weights_sha256({"b": w}) != base
    assert weights_sha256({"a": w.reshape(2, 3)}) != base
    assert weights_sha256({"a": w.view(torch.int32)}) != base
    assert weights_sha256({"a": w.clone()}) == base
    assert weights_sha256({"x": w, "a": w}) == weights_sha256({"a": w, "x": w})
    assert weights_sha256({"a": w.bfloat16(), "m": torch.ones(2, dtype=torch.bool)})


class _Foreign:
    """Stands for any class a third-party pickle may hold."""


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tiny_checkpoint(tmp_path / "good.pt").read_bytes()
    files = {
        "empty": (b"", "is empty"),
        "truncated": (good[: len(good) // 2], "is truncated or damaged"),
        "text": (b"epoch,loss\n1,0.5\n", "is a text file"),
        "pickle": (pickle.dumps({"w": _Foreign()}, protocol=2), "is a Python pickle"),
        "onnx": (b"\x08\x08\x12\x07pytorch\x1a\x032.6", "is an ONNX model"),
        "foreign_torch": (None, "not a membrane-py checkpoint"),
    }
    out = {}
    for name, (data, message) in files.items():
        path = tmp_path / (f"{name}.onnx" if name == "onnx" else f"{name}.pt")
        if data is None:
            torch.save({"weights": torch.zeros(3)}, path)
        else:
            path.write_bytes(data)
        out[name] = (path, message)
    return out


def test_unusable_files_give_one_line_checkpoint_errors(tmp_path):
    for name, (path, message) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert message in text, (name, text)
        assert str(path) in text and "\n" not in text, (name, text)
    assert issubclass(CheckpointError, ValueError)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(tiny_checkpoint(folder / "a.pt"), folder / "a.onnx", check=False).path


def test_onnx_export_stores_the_tensor_digest(exported_onnx):
    model = onnx.load(exported_onnx)
    info = OnnxModelInfo.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert info.tensors_sha256 == onnx_tensors_sha256(model)
    assert OnnxBackend(exported_onnx).info.tensors_sha256 == info.tensors_sha256


def test_flipped_onnx_weights_are_detected(exported_onnx, tmp_path):
    model = onnx.load(exported_onnx)
    biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray(exported_onnx.read_bytes())
    start = data.find(biggest) + len(biggest) // 2
    assert start > len(biggest) // 2  # the raw bytes were found in the file
    data[start:start + 64] = bytes(b ^ 0x5A for b in data[start:start + 64])
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped\.onnx is damaged.*export it again"):
        load_predictor(bad)


def test_unreadable_onnx_files_give_checkpoint_errors(exported_onnx, tmp_path):
    data = exported_onnx.read_bytes()
    for name, content in {"truncated": data[: len(data) // 3], "empty": b"",
                          "text": b"not a model\n"}.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}\.onnx .*re-copy or re-export"):
            OnnxBackend(path)
