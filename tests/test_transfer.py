"""Transfer learning: freeze modes touch exactly the intended weights, leaky freeze scales the
encoder's updates, episodic batches mix data sets at the requested ratio, a new class count
replaces only the head, and lineage survives save/load. Tiny U-Nets on synthetic data, CPU."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from typer.testing import CliRunner

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.codes import encode_label_png, write_png
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.train.checkpoint import file_sha256, load_checkpoint
from membrane_py.train.config import TrainJob
from membrane_py.train.episodic import EpisodicBatchSampler, split_batch
from membrane_py.train.trainer import train_model
from membrane_py.train.transfer_modes import (
    DECODER,
    ENCODER,
    FROZEN_BN,
    PARTS,
    TRANSFER_MODES,
    load_backbone,
    lr_factors,
)
from membrane_py.transfer.finetune import fine_tune, parse_episodic
from membrane_py.volumes.synthetic import make_synthetic

PATCH = 32
SYN = make_synthetic((3, 96, 96), seed=0)


class Sections(Dataset):
    """Deterministic PATCH^2 crops of synthetic sections; records which items were read.
    With ``n_classes=3`` the membrane class is split in two (for head-replacement tests)."""

    def __init__(self, length: int, seed: int = 0, n_classes: int = 2,
                 intensity: tuple[float, float] = (1.0, 0.0)) -> None:
        self.length, self.seed, self.n_classes = length, seed, n_classes
        self.intensity = intensity  # (gain, offset) applied to the EM
        self.preprocess = PreprocessConfig()
        self.seen: list[int] = []

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        self.seen.append(i)
        rng = np.random.default_rng([self.seed, i])
        z = rng.integers(len(SYN.em))
        y, x = rng.integers(0, 96 - PATCH, 2)
        gain, offset = self.intensity
        img = (SYN.em[z, y:y + PATCH, x:x + PATCH] * gain + offset).clip(0, 255).astype(np.uint8)
        lab = SYN.membranes[z, y:y + PATCH, x:x + PATCH].astype(np.int64)
        if self.n_classes == 3:
            lab[(lab == 2) & (SYN.instances[z, y:y + PATCH, x:x + PATCH] % 2 == 0)] = 3
        return torch.from_numpy(preprocess(img, self.preprocess)[None]), torch.from_numpy(lab)


def _cfg(tmp_path, name: str, **kw) -> TrainJob:
    base = dict(out_dir=str(tmp_path), name=name, depth=2, base_filters=4, patch_size=PATCH,
                batch_size=4, epochs=1, lr=1e-2, log_every=1, seed=1, device="cpu", amp=False,
                loss="ce")  # weighted_ce would read the datasets to count classes
    return TrainJob(**{**base, **kw})


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A briefly trained 2-class checkpoint (so batch-norm statistics are not the defaults)."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("parent")
    return train_model(Sections(8, seed=7), None, _cfg(out, "parent")).last_path


def _one_step(tmp_path, parent, name: str, **kw) -> dict[str, torch.Tensor]:
    """Fine-tune ``parent`` for exactly one batch; the resulting state dict."""
    res = train_model(Sections(4), None, _cfg(tmp_path, name, pretrained=str(parent), **kw))
    return load_checkpoint(res.last_path).state_dict


BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("frozen_bn", FROZEN_BN)
@pytest.mark.parametrize("mode", TRANSFER_MODES)
def test_freeze_modes_change_exactly_the_intended_weights(tmp_path, parent, mode, frozen_bn):
    before = load_checkpoint(parent).state_dict
    after = _one_step(tmp_path, parent, mode, transfer_mode=mode, frozen_bn=frozen_bn)
    frozen = {p for p, f in lr_factors(mode).items() if f == 0}
    assert frozen == {"continuous": set(), "leaky": set(), "freeze_encoder": set(ENCODER),
                      "last_layer": set(PARTS) - {"head"}}[mode]
    trainable_names = {n for n, _ in UNet(UNetConfig(depth=2, base_filters=4)).named_parameters()}
    for key, old in before.items():
        part = key.split(".", 1)[0]
        if part in frozen and key.endswith(BN_STATS) and frozen_bn == "adapt":
            assert not torch.equal(after[key], old), key  # statistics follow the new data
        elif part in frozen:  # weights (and pretrained batch-norm statistics) stay
            assert torch.equal(after[key], old), key
        elif key in trainable_names:
            assert not torch.equal(after[key], old), key


def _first_encoder_bn_input_mean(state_dict: dict, data: Dataset) -> torch.Tensor:
    """Per-channel mean of what the first encoder batch norm sees on ``data``."""
    model = UNet(UNetConfig(depth=2, base_filters=4))
    model.load_state_dict(state_dict)
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        return model.down[0][0](x).mean((0, 2, 3))


@pytest.mark.parametrize("frozen_bn", FROZEN_BN)
def test_freeze_encoder_adapts_batch_norm_to_new_intensities(tmp_path, parent, frozen_bn):
    """Fine-tuning on darker, low-contrast EM: the frozen encoder's weights never move; with
    ``adapt`` its batch-norm running means move to the new data's, with ``pretrained`` not."""
    before = load_checkpoint(parent).state_dict
    new = Sections(16, seed=3, intensity=(0.4, 20))
    res = train_model(new, None, _cfg(tmp_path, frozen_bn, pretrained=str(parent), epochs=3,
                                      transfer_mode="freeze_encoder", frozen_bn=frozen_bn))
    after = load_checkpoint(res.last_path).state_dict
    for key, old in before.items():
        if key.split(".", 1)[0] in ENCODER and not key.endswith(BN_STATS):
            assert torch.equal(after[key], old), key
    target = _first_encoder_bn_input_mean(before, new)
    gap_before = (before["down.0.1.running_mean"] - target).abs().mean()
    gap_after = (after["down.0.1.running_mean"] - target).abs().mean()
    if frozen_bn == "adapt":
        assert gap_after < 0.3 * gap_before, (gap_before, gap_after)
    else:
        assert torch.equal(after["down.0.1.running_mean"], before["down.0.1.running_mean"])


def test_leaky_freeze_scales_encoder_updates_by_the_ratio(tmp_path, parent):
    start = load_checkpoint(parent).state_dict
    sgd = dict(optimizer="sgd", momentum=0.0, lr=0.5)
    full = _one_step(tmp_path, parent, "full", **sgd)
    leaky = _one_step(tmp_path, parent, "leaky", transfer_mode="leaky", leaky_ratio=0.1, **sgd)
    for name, _ in UNet(UNetConfig(depth=2, base_filters=4)).named_parameters():
        ratio = 0.1 if name.split(".", 1)[0] in ENCODER else 1.0
        d_full, d_leaky = full[name] - start[name], leaky[name] - start[name]
        assert d_full.abs().max() > 0, name
        torch.testing.assert_close(d_leaky, ratio * d_full, rtol=1e-3, atol=1e-6, msg=name)


def test_episodic_sampler_mixes_data_sets_at_the_ratio():
    sampler = EpisodicBatchSampler(n_new=40, n_memory=[30, 10], batch_size=8, ratio=0.25, seed=3)
    assert len(sampler) == 40 // 6
    for _ in range(3):  # several epochs: the small memory set (10) cycles
        batches = list(sampler)
        assert len(batches) == 6
        new = [i for b in batches for i in b if i < 40]
        assert len(new) == len(set(new)) == 36  # each new sample at most once per epoch
        for b in batches:
            origins = [0 if i < 40 else 1 if i < 70 else 2 for i in b]
            assert len(b) == 8 and origins.count(0) == 6
            assert origins.count(1) == origins.count(2) == 1  # memory shared equally
    a, b = (EpisodicBatchSampler(40, [30], 8, 0.5, seed=3) for _ in range(2))
    first = list(a)
    assert list(b) == first and list(a) != first  # seeded; reshuffled each epoch
    assert split_batch(8, 0.25) == (6, 2)
    with pytest.raises(ValueError, match="cannot hold"):
        split_batch(2, 0.1)


def test_training_with_episodic_memory_counts_origins(tmp_path, parent):
    new, old_a, old_b = Sections(16, 1), Sections(6, 2), Sections(5, 3)
    cfg = _cfg(tmp_path, "episodic", pretrained=str(parent), batch_size=4, episodic_ratio=0.5,
               epochs=2)
    res = train_model(new, None, cfg, memory=[old_a, old_b])
    iterations = 2 * (16 // 2)
    assert len(new.seen) == 2 * iterations  # half of each batch new ...
    assert len(old_a.seen) == len(old_b.seen) == iterations  # ... half memory, split equally
    lineage = load_checkpoint(res.last_path).lineage
    assert lineage["episodic"] == {"ratio": 0.5, "data": ["Sections", "Sections"]}
    bad = _cfg(tmp_path, "bad", episodic=[{"images": "a", "labels": "b"}])
    with pytest.raises(ValueError, match="memory datasets"):
        train_model(new, None, bad)


def test_new_class_count_replaces_only_the_head(tmp_path, parent):
    before = load_checkpoint(parent).state_dict
    model = UNet(UNetConfig(depth=2, base_filters=4, n_classes=3))
    fresh_head = model.head.weight.detach().clone()
    assert load_backbone(model, before) is True
    for key, value in model.state_dict().items():
        if key.startswith("head."):
            assert value.shape[0] == 3 and value.shape[1:] == before[key].shape[1:]
        else:
            assert torch.equal(value, before[key]), key
    assert torch.equal(model.head.weight, fresh_head)
    assert load_backbone(UNet(UNetConfig(depth=2, base_filters=4)), before) is False

    res = train_model(Sections(4, n_classes=3), None,
                      _cfg(tmp_path, "three", pretrained=str(parent), transfer_mode="last_layer"))
    ck = load_checkpoint(res.last_path)
    assert ck.model["n_classes"] == 3 and ck.class_names == ["class1", "class2", "class3"]
    assert ck.lineage["new_head"] is True
    assert ck.lineage["parent_classes"] == ["non-membrane", "membrane"]
    assert all(torch.equal(ck.state_dict[k], v) for k, v in before.items()
               if not k.startswith("head."))
    with pytest.raises(ValueError, match="architecture"):
        train_model(Sections(4), None, _cfg(tmp_path, "deep", depth=3, pretrained=str(parent)))


def _write_folder(root, sections: list[int]):
    """Synthetic sections as PNG image / label-code folders."""
    images, labels = root / "images", root / "labels"
    for z in sections:
        write_png(images / f"s{z}.png", SYN.em[z])
        write_png(labels / f"s{z}.png", encode_label_png(SYN.membranes[z], 2))
    return images, labels


def test_lineage_records_ancestry_and_round_trips(tmp_path, parent):
    new_im, new_lab = _write_folder(tmp_path / "new", [0, 1])
    old_im, old_lab = _write_folder(tmp_path / "old", [2])
    child = fine_tune(parent, new_im, new_lab, mode="leaky", leaky_ratio=0.2,
                      episodic=[(old_im, old_lab)], out_dir=str(tmp_path), name="child",
                      patch_size=PATCH, patches_per_epoch=8, val_fraction=0.0, batch_size=4,
                      epochs=1, device="cpu", seed=2)
    grandchild = fine_tune(child.last_path, new_im, new_lab, mode="freeze_encoder",
                           out_dir=str(tmp_path), name="grandchild", patch_size=PATCH,
                           patches_per_epoch=4, val_fraction=0.0, batch_size=4, epochs=1,
                           device="cpu")
    raw = torch.load(grandchild.last_path, weights_only=True)
    assert "Transfer mode: freeze_encoder (frozen batch norm: pretrained)" in \
        (tmp_path / "grandchild.log").read_text()
    lineage = load_checkpoint(grandchild.last_path).lineage
    assert raw["lineage"] == lineage
    assert lineage["parent"] == str(child.last_path) and lineage["mode"] == "freeze_encoder"
    assert lineage["leaky_ratio"] is None and lineage["episodic"] is None
    assert lineage["frozen_bn"] == "pretrained"
    assert lineage["data"] == {"images": str(new_im), "labels": str(new_lab)}
    up = lineage["parent_lineage"]
    assert up["parent"] == str(parent) and up["parent_sha256"] == file_sha256(parent)
    assert up["mode"] == "leaky" and up["leaky_ratio"] == 0.2 and up["new_head"] is False
    assert up["frozen_bn"] is None  # nothing frozen
    assert up["episodic"] == {"ratio": 0.25,
                              "data": [{"images": str(old_im), "labels": str(old_lab)}]}
    assert up["parent_lineage"] == {} and up["parent_epochs"] == 1
    assert load_checkpoint(grandchild.last_path).model_config.base_filters == 4  # inherited


def test_cli_train_from_pretrained_with_episodic_memory(tmp_path, parent):
    from membrane_py.cli import app

    new_im, new_lab = _write_folder(tmp_path / "new", [0, 1])
    old_im, old_lab = _write_folder(tmp_path / "old", [2])
    args = ["train", "--images", str(new_im), "--labels", str(new_lab), "--out", str(tmp_path),
            "--name", "cli", "--pretrained", str(parent), "--transfer-mode", "leaky",
            "--leaky-ratio", "0.3", "--episodic", f"{old_im}:{old_lab}:codes",
            "--episodic-ratio", "0.5", "--patch-size", str(PATCH), "--patches-per-epoch", "4",
            "--val-fraction", "0", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
            "--save-job", str(tmp_path / "job.json")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    job = json.loads((tmp_path / "job.json").read_text())
    assert (job["depth"], job["base_filters"]) == (2, 4)  # taken from the pretrained network
    assert job["transfer_mode"] == "leaky" and job["leaky_ratio"] == 0.3
    assert job["episodic"] == [{"images": str(old_im), "labels": str(old_lab),
                                "label_format": "codes"}]
    lineage = load_checkpoint(tmp_path / "cli_last.pt").lineage
    assert lineage["mode"] == "leaky" and lineage["episodic"]["ratio"] == 0.5
    assert "Transfer mode: leaky (encoder lr x0.3), episodic memory" in \
        (tmp_path / "cli.log").read_text()


def test_config_validates_transfer_options(tmp_path, parent):
    with pytest.raises(ValueError, match="transfer_mode must be"):
        _cfg(tmp_path, "x", transfer_mode="freeze_everything", pretrained=str(parent))
    with pytest.raises(ValueError, match="needs a pretrained"):
        _cfg(tmp_path, "x", transfer_mode="freeze_encoder")
    with pytest.raises(ValueError, match="episodic entries"):
        _cfg(tmp_path, "x", episodic=[{"images": "a"}])
    with pytest.raises(ValueError, match="frozen_bn"):
        _cfg(tmp_path, "x", frozen_bn="frozen", pretrained=str(parent))
    with pytest.raises(ValueError, match="leaky_ratio"):
        _cfg(tmp_path, "x", leaky_ratio=2.0)
    with pytest.raises(ValueError, match="episodic_ratio"):
        _cfg(tmp_path, "x", episodic_ratio=1.0)
    assert parse_episodic("a:b") == {"images": "a", "labels": "b"}
    with pytest.raises(ValueError, match="IMAGES"):
        parse_episodic("only_one")
    cfg = _cfg(tmp_path, "x", pretrained=str(parent), transfer_mode="leaky",
               episodic=[{"images": "a", "labels": "b", "label_format": "isbi"}])
    assert TrainJob.from_dict(json.loads(cfg.to_json())) == cfg
    assert set(PARTS) == {n for n, m in UNet(UNetConfig(depth=2, base_filters=4)).named_children()
                          if any(True for _ in m.parameters())}
    assert set(DECODER) | set(ENCODER) == set(PARTS)
