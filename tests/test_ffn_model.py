"""The FFN conv stack and the import of the released TensorFlow checkpoint."""

from __future__ import annotations

import gzip
import io
import shutil

import h5py
import numpy as np
import pytest
import torch

from membrane_py.ffn.checkpoint import FFNCheckpoint, import_tf_checkpoint, load_ffn, save_ffn
from membrane_py.ffn.tfbundle import BundleError, read_index, read_tensors
from membrane_py.ffn.tfimport import tf_names
from membrane_py.models.ffn import FFN, FFNConfig, fov_flops
from membrane_py.train.checkpoint import CheckpointError

PREFIX = "ffn_fib25_model/model.ckpt-27465036"


def test_shapes_and_presets():
    net = FFN(FFNConfig(depth=2, features=4, fov=(9, 11, 13), deltas=(2, 3, 4)))
    img, seed = torch.randn(3, 1, 9, 11, 13), torch.randn(3, 1, 9, 11, 13)
    assert net(img, seed).shape == (3, 1, 9, 11, 13)
    sparse = FFNConfig.sparse_z()
    assert sparse.fov == (17, 33, 33) and sparse.deltas == (4, 8, 8)
    # the reference's published parameter counts of both configurations
    assert sum(p.numel() for p in FFN().parameters()) == 638_433
    assert sum(p.numel() for p in FFN(sparse).parameters()) == 472_353
    assert 45e9 < fov_flops(FFNConfig()) < 47e9
    with pytest.raises(ValueError, match="odd"):
        FFNConfig(fov=(32, 33, 33))
    with pytest.raises(ValueError, match="deltas"):
        FFNConfig(deltas=(20, 8, 8))
    assert FFNConfig.from_dict(sparse.to_dict()) == sparse


def test_residual_structure():
    """With every module's second conv zeroed the residual modules are identities, so the
    output is conv_lom(relu(conv0_b(relu(conv0_a(x))))) added to the mask logits."""
    torch.manual_seed(0)
    net = FFN(FFNConfig(depth=3, features=4, fov=(7, 7, 7), deltas=(2, 2, 2)))
    assert net.layer_names() == ["conv0_a", "conv0_b", "conv1_a", "conv1_b", "conv2_a",
                                 "conv2_b", "conv_lom"]
    for conv in net.conv_layers():
        torch.nn.init.normal_(conv.bias, std=0.1)
    img, seed = torch.randn(1, 1, 7, 7, 7), torch.randn(1, 1, 7, 7, 7)
    full = net(img, seed)
    with torch.no_grad():
        for b in net.blocks_b:
            b.weight.zero_()
            b.bias.zero_()
        x = net.conv0_b(torch.relu(net.conv0_a(torch.cat([img, seed], 1))))
        expected = seed + net.conv_lom(torch.relu(x))
        assert torch.allclose(net(img, seed), expected, atol=1e-6)
        assert not torch.allclose(full, expected, atol=1e-4)  # the modules did contribute


def test_checkpoint_roundtrip(tmp_path):
    net = FFN(FFNConfig(depth=2, features=4, fov=(9, 9, 9), deltas=(2, 2, 2)))
    ckpt = FFNCheckpoint({k: v for k, v in net.state_dict().items()}, net.config.to_dict(),
                         image_mean=100.0, image_stddev=20.0, step=7)
    path = save_ffn(tmp_path / "m.pt", ckpt)
    assert set(torch.load(path, weights_only=True)) >= {"state_dict", "model", "image_mean"}
    back = load_ffn(path)
    assert back.config == net.config and back.image_mean == 100.0 and back.step == 7
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict[k], v)
    with pytest.raises(CheckpointError, match="configured"):
        load_ffn(path, FFNConfig())
    raw = bytearray(path.read_bytes())
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text file"):
        load_ffn(tmp_path / "text.pt")
    (tmp_path / "cut.pt").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError):
        load_ffn(tmp_path / "cut.pt")


@pytest.mark.realdata
def test_reader_lists_the_released_checkpoint(shared_data):
    entries = read_index(shared_data / PREFIX)
    convs = sorted(n for n in entries if n.startswith("seed_update/"))
    assert len(convs) == 2 * 25  # 25 convolutions, weights and biases
    assert entries["seed_update/conv0_a/weights"].shape == (3, 3, 3, 2, 32)
    assert entries["seed_update/conv_lom/weights"].shape == (1, 1, 1, 32, 1)
    assert entries["global_step"].dtype == "<i4"
    tensors = read_tensors(shared_data / (PREFIX + ".index"))  # every tensor, CRC checked
    assert int(tensors["global_step"]) == 27465036
    total = sum(v.nbytes for k, v in tensors.items() if k.startswith("seed_update/"))
    assert total == 638_433 * 4


@pytest.mark.realdata
def test_damaged_checkpoints_fail_clearly(shared_data, tmp_path):
    src = shared_data / PREFIX
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(str(src) + suffix, tmp_path / ("m" + suffix))
    data = tmp_path / "m.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[200] ^= 0xFF  # inside conv0_a/weights
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="CRC"):
        read_tensors(tmp_path / "m", ["seed_update/conv0_a/weights"])
    data.write_bytes(bytes(raw[:1000]))
    with pytest.raises(BundleError, match="outside the data file"):
        read_tensors(tmp_path / "m", ["seed_update/conv9_b/weights"])
    index = tmp_path / "m.index"
    head = bytearray(index.read_bytes())
    head[-1] ^= 0xFF
    index.write_bytes(bytes(head))
    with pytest.raises(BundleError, match="magic"):
        read_index(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="prefix"):
        read_index(tmp_path / "nothere")


@pytest.mark.realdata
def test_import_maps_every_tensor(shared_data, tmp_path):
    ckpt = import_tf_checkpoint(shared_data / PREFIX)
    net = FFN()
    names = tf_names(net)
    assert len(names) == len(net.state_dict()) == 50
    assert set(ckpt.state_dict) == set(net.state_dict())
    raw = read_tensors(shared_data / PREFIX, ["seed_update/conv3_b/weights"])
    w = ckpt.state_dict["blocks_b.2.weight"]  # conv3_b is the third module's second conv
    assert torch.equal(w, torch.from_numpy(raw["seed_update/conv3_b/weights"]
                                           .transpose(4, 3, 0, 1, 2).copy()))
    with pytest.raises(CheckpointError, match="depth-9"):
        import_tf_checkpoint(shared_data / PREFIX, FFNConfig(depth=9))
    with pytest.raises(CheckpointError, match="shape"):
        import_tf_checkpoint(shared_data / PREFIX, FFNConfig(features=16))
    # our own format, loadable with weights_only=True, gives the same network
    path = save_ffn(tmp_path / "fib25.pt", ckpt)
    again = load_ffn(path)
    assert again.step == 27465036 and again.lineage["format"] == "tensorflow-bundle"


@pytest.mark.realdata
def test_imported_model_follows_a_real_neurite(shared_data):
    """Two FOV steps from the deepest voxel of a ground-truth body of fib25_sample2 mark
    (probability > 0.5) nearly the same voxels as that body."""
    from scipy import ndimage

    from membrane_py.geometry import Box
    from membrane_py.volumes.open import open_volume

    root = shared_data / "fib25_sample2"
    with h5py.File(io.BytesIO(gzip.open(root / "groundtruth.h5.gz").read())) as f:
        body = f["transforms"][:][:, 1][f["stack"][100:150, 100:150, 100:150]]
    depth = ndimage.distance_transform_edt(body > 0)[16:34, 16:34, 16:34]
    z, y, x = (int(v) + 116 for v in np.unravel_index(np.argmax(depth), depth.shape))
    crop = Box(z - 16, z + 17, y - 16, y + 17, x - 16, x + 17)
    image = open_volume(root / "grayscale").read(crop)
    local = body[z - 116:z - 83, y - 116:y - 83, x - 116:x - 83]
    obj = local == local[16, 16, 16]
    net = load_ffn(shared_data / PREFIX).build_model()
    img = torch.from_numpy((image.astype(np.float32) - 128) / 33)[None, None]
    s = torch.full_like(img, float(np.log(0.05 / 0.95)))
    s[0, 0, 16, 16, 16] = float(np.log(0.95 / 0.05))
    with torch.no_grad():
        for _ in range(2):
            s = net(img, s)
    pred = s[0, 0].numpy() > 0
    assert pred[16, 16, 16] and 0.02 < pred.mean() < 0.98
    assert (pred & obj).sum() / (pred | obj).sum() > 0.7
