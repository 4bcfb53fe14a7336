"""Prediction with a 3D network (:mod:`membrane_py.models.unet3d`) in overlapping cubes.

The tiled engine (:mod:`membrane_py.infer.engine`) feeds 2D windows section by section; a
3D network needs cubes. The volume is reflect-padded by ``margin`` voxels and cut into
cubes of ``cube`` voxels; each cube is predicted with its margin of context around it
(``cube + 2 * margin`` must be a multiple of ``2 ** depth``) and only its core is kept,
so cube borders do not show. Affinity networks only (a sigmoid per channel).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from membrane_py.augment.preprocess import preprocess
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint
from membrane_py.train.device import pick_device


def predict_cubes(model: str | Path | Checkpoint, em: np.ndarray, cube: int = 64,
                  margin: int = 16, device: str = "auto",
                  progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> np.ndarray:
    """(z, y, x) uint8 EM -> (C, z, y, x) float32 affinities of a 3D checkpoint."""
    ck = model if isinstance(model, Checkpoint) else load_checkpoint(model)
    cfg = ck.model_config
    if cfg.arch != "unet3d" or ck.target != "affinities":
        raise ValueError(f"predict_cubes runs 3D affinity networks (arch unet3d); this "
                         f"checkpoint is {cfg.arch} for {ck.target}: use the tiled engine")
    side = cube + 2 * margin
    if em.ndim != 3 or cube < 1 or margin < 0 or side % cfg.multiple:
        raise ValueError(f"need a (z, y, x) volume and cube + 2 * margin ({side}) a multiple "
                         f"of {cfg.multiple} (2**depth)")
    dev = pick_device(device)
    net = ck.build_model().to(dev).eval()
    data = preprocess(em, ck.preprocess_config).astype(np.float32, copy=False)
    # reflect needs pad < side; beyond that (tiny volumes) repeat the edge
    ends = [(-s) % cube for s in em.shape]
    mode = "reflect" if min(em.shape) > margin + max(ends) else "edge"
    data = np.pad(data, [(margin, margin + e) for e in ends], mode=mode)
    out = np.zeros((cfg.n_classes, *(s + e for s, e in zip(em.shape, ends, strict=True))),
                   np.float32)
    corners = list(itertools.product(*(range(0, s + e, cube)
                                       for s, e in zip(em.shape, ends, strict=True))))
    with torch.inference_mode():
        for k, (z, y, x) in enumerate(corners):
            check_cancel(cancel)
            window = torch.from_numpy(np.ascontiguousarray(
                data[z:z + side, y:y + side, x:x + side]))[None, None].to(dev)
            p = torch.sigmoid(net(window))[0, :, margin:margin + cube, margin:margin + cube,
                                            margin:margin + cube]
            out[:, z:z + cube, y:y + cube, x:x + cube] = p.float().cpu().numpy()
            report(progress, Event.progress("predict", k + 1, len(corners), "cubes"))
    return out[:, :em.shape[0], :em.shape[1], :em.shape[2]]
