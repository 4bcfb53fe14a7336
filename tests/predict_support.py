"""Helpers shared by the prediction tests: a tiny real checkpoint and tile-folder readers."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint
from mock_vast_server.launch import start_server

#: a U-Net small enough to predict test volumes in a blink on a shared CPU; its receptive
#: radius (6 * 2**2 - 2 = 22 px) is below the tests' 32 px context margin
TINY = UNetConfig(depth=2, base_filters=4, norm="none")
_TILE = re.compile(r"mip(\d+)/Sect_(\d+)/sect_\d+_r(\d+)_c(\d+)\.png$")


def tiny_checkpoint(path: Path, class_names: list[str] | None = None, seed: int = 0,
                    norm: str = "none") -> Path:
    """Save a randomly initialised tiny U-Net as a real checkpoint."""
    names = class_names or ["non-membrane", "membrane"]
    torch.manual_seed(seed)
    cfg = UNetConfig(**{**TINY.to_dict(), "n_classes": len(names), "norm": norm})
    net = UNet(cfg)
    return save_checkpoint(path, Checkpoint(state_dict=net.state_dict(), model=cfg.to_dict(),
                                            class_names=names,
                                            preprocess=PreprocessConfig().to_dict()))


def tile_keys(folder: Path, mip: int) -> set[tuple[int, int, int]]:
    """(z, row, col) of every PNG tile at ``mip`` under an output folder."""
    keys = set()
    for p in folder.rglob("*.png"):
        m = _TILE.search(p.relative_to(folder).as_posix())
        if m and int(m.group(1)) == mip:
            keys.add((int(m.group(2)), int(m.group(3)), int(m.group(4))))
    return keys


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (temporary files included: a restarted
    run removes what a killed one left)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def synthetic_training_folders(folder: Path, sections: int = 3, side: int = 128,
                               seed: int = 4) -> tuple[Path, Path]:
    """EM and ISBI-style labels (0 = membrane, 255 = interior) of a synthetic volume as PNG
    folders ``folder/im`` and ``folder/lab``."""
    import cv2
    import numpy as np

    from membrane_py.volumes.synthetic import make_synthetic

    syn = make_synthetic((sections, side, side), seed=seed)
    images, labels = folder / "im", folder / "lab"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for z in range(sections):
        cv2.imwrite(str(images / f"s{z}.png"), syn.em[z])
        cv2.imwrite(str(labels / f"s{z}.png"),
                    np.where(syn.membranes[z] == 2, 0, 255).astype(np.uint8))
    return images, labels


def loading_server(spec: str, tmp_path_factory):
    """A mock VAST server process over ``spec`` that may load layers from anywhere under
    pytest's temporary folder (where the tests write their predictions)."""
    return start_server(spec, state_dir=tmp_path_factory.mktemp("state"),
                        allow_load=[tmp_path_factory.getbasetemp()])
