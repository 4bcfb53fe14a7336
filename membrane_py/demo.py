"""`make demo`: the main job end to end on bundled synthetic data, in a few minutes on a CPU.

1. Train a small U-Net briefly on one synthetic volume (exact membrane ground truth).
2. Serve a *different* synthetic volume over the VAST protocol (the mock server).
3. Predict it through the server on the fly (16-section chunks with context, prefetching),
   writing mEMbrain-layout probability tiles, their pyramid and a `.vsvi`, which the server
   loads as a layer while the run continues.
4. Read the prediction layer back through the server (it must equal the tiles on disk) and
   score it against the served ground-truth segmentation layer: ISBI V_rand of the
   membrane-derived cells and the pixel error of the thresholded membrane map.
5. Draw one picture to look at: the middle section's EM | membrane probability | 2D
   instances (`preview.png`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from membrane_py.codes import write_png
from membrane_py.events import Event, ProgressCallback, report
from membrane_py.geometry import Box


@dataclass
class DemoConfig:
    """What the demo runs on and where it writes; the defaults take a few CPU minutes."""

    out: Path = Path("demo_output")
    volume: str = "synthetic:8x1536x1536"  # served and predicted (2 x 2 tiles per section)
    train_shape: tuple[int, int, int] = (6, 512, 512)
    train_seed: int = 1  # a different volume from the served one (seed 0)
    depth: int = 3
    base_filters: int = 8
    patch_size: int = 128
    batch_size: int = 8
    iterations: int = 60
    lr: float = 3e-3
    chunk: tuple[int, int, int] = (16, 1024, 1024)


@dataclass
class DemoResult:
    checkpoint: Path
    train_seconds: float
    prediction_dir: Path
    descriptor: Path
    layer_nr: int
    n_tiles: int
    megabytes: float
    predict_seconds: float
    identical: bool
    v_rand: float
    pixel_error: float
    preview: Path


def preview_picture(em: np.ndarray, prob_u8: np.ndarray, side: int = 512) -> np.ndarray:
    """One RGB picture of a section: EM | membrane probability | 2D instances (palette
    colours), each panel at most ``side`` px wide, separated by a white gap."""
    import cv2

    from membrane_py.codes import palette_rgb
    from membrane_py.segment.instances import segment_section, to_probability

    ids = segment_section(to_probability(prob_u8))
    scale = min(1.0, side / max(em.shape))
    size = (max(1, round(em.shape[1] * scale)), max(1, round(em.shape[0] * scale)))
    grey = [np.repeat(cv2.resize(p, size, interpolation=cv2.INTER_AREA)[..., None], 3, 2)
            for p in (em, prob_u8)]
    panels = [*grey, cv2.resize(palette_rgb(ids), size, interpolation=cv2.INTER_NEAREST)]
    gap = np.full((size[1], 8, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def train_demo_model(cfg: DemoConfig, progress: ProgressCallback | None = None) -> Path:
    """Train the demo U-Net on a synthetic volume's exact membranes; returns the checkpoint."""
    from membrane_py.augment.dataset import OnTheFlyPatchDataset
    from membrane_py.augment.preprocess import PreprocessConfig
    from membrane_py.train.config import TrainJob
    from membrane_py.train.trainer import train_model
    from membrane_py.volumes.synthetic import make_synthetic

    data = make_synthetic(cfg.train_shape, cfg.train_seed)
    patches = OnTheFlyPatchDataset(list(data.em), list(data.membranes), cfg.patch_size,
                                   cfg.iterations * cfg.batch_size, PreprocessConfig(),
                                   seed=cfg.train_seed, rotate=False)
    train_cfg = TrainJob(out_dir=str(cfg.out.resolve() / "model"), name="demo_unet",
                            class_names=["non-membrane", "membrane"], depth=cfg.depth,
                            base_filters=cfg.base_filters, patch_size=cfg.patch_size, epochs=1,
                            batch_size=cfg.batch_size, lr=cfg.lr, augment=None,
                            voxel_size=list(data.voxel_size))
    return train_model(patches, None, train_cfg, n_classes=2, progress=progress).best_path


def score_membranes(prob_tiles: np.ndarray, instances: np.ndarray) -> tuple[float, float]:
    """(mean V_rand, pixel error) of 8-bit membrane probability sections against instance
    ground truth, whose membranes are derived exactly as the synthetic data draws them."""
    from membrane_py.codes import u8_to_probability
    from membrane_py.train.metrics import membrane_scores, pixel_error
    from membrane_py.volumes.synthetic import membrane_band

    gt = np.stack([1 + membrane_band(s).astype(np.uint8) for s in instances])
    prob = u8_to_probability(prob_tiles, missing=0.0)
    v_rand = [membrane_scores(p, g)["v_rand"] for p, g in zip(prob, gt, strict=True)]
    return float(np.mean(v_rand)), pixel_error(np.where(prob > 0.5, 2, 1), gt)


def run_demo(cfg: DemoConfig, progress: ProgressCallback | None = None) -> DemoResult:
    """Train, serve, predict on the fly, load into the server, read back, score."""
    from membrane_py.predict.job import PredictJob
    from membrane_py.predict.runner import run_prediction
    from membrane_py.vastapi.client import VastClient
    from membrane_py.volumes.tiles import VsviVolume
    from mock_vast_server.launch import start_server

    out = cfg.out.resolve()
    t0 = time.perf_counter()
    checkpoint = train_demo_model(cfg, progress)
    train_seconds = time.perf_counter() - t0
    with start_server(volume=cfg.volume, state_dir=out / "server_state",
                      allow_load=[out]) as server, \
            VastClient(server.host, server.port) as client:
        job = PredictJob(checkpoint=str(checkpoint), source=f"vast://{server.host}:{server.port}",
                         out=str(out / "prediction"), layer_name="membrane-py demo prediction",
                         load_in_vast=True, chunk=list(cfg.chunk),
                         overwrite=True)  # the network is new each run: so are the tiles
        result = run_prediction(job, progress)
        descriptor, layer_nr = result.descriptors[0], result.layers[0]
        whole = Box.full(client.get_info().data_size)
        served = client.get_em_image(layer_nr, whole)
        identical = bool(np.array_equal(served, VsviVolume(descriptor).read(whole)))
        report(progress, Event.progress("demo: score against the ground truth", 0, 1))
        names = client.get_layer_names()
        client.set_api_layers_enabled(True)
        client.set_selected_api_layer(names.index("ground truth"))
        v_rand, error = score_membranes(served, client.get_seg_image_rle(whole))
        report(progress, Event.progress("demo: score against the ground truth", 1, 1))
        z = whole.z1 // 2
        em = client.get_em_image(0, Box(z, z + 1, 0, whole.y1, 0, whole.x1))[0]
    preview = out / "preview.png"
    write_png(preview, preview_picture(em, served[z]))
    report(progress, Event.artifact(preview, "demo", "EM | probability | instances"))
    return DemoResult(checkpoint, train_seconds, result.out / "probability", descriptor, layer_nr,
                      result.tiles_written, result.megabytes_read, result.seconds, identical,
                      v_rand, error, preview)
