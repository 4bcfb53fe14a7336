"""Benchmark: tiled inference of the PyTorch and ONNX Runtime engines against this machine's
compute roofline. Prints one JSON object; every number comes from one run on one machine.

``main()`` returns a dict of sections:

- ``machine``: devices and thread counts;
- ``roofline``: measured matmul FLOP/s (float32 on CPU; bf16 and float32 on CUDA);
- ``models``: per architecture (default U-Net, light variant; random weights): FLOPs per
  pixel (``torch.utils.flop_counter``) and per engine the model-only throughput in MB/s of
  uint8 EM, the achieved FLOP/s and its fraction of the roofline (``utilisation`` counts the
  output pixels, ``executed_utilisation`` also the margins the tiles compute); besides the
  fp32 engines, PyTorch bf16 and ONNX Runtime int8 (measured against the fp32 roofline);
- ``end_to_end``: a whole volume through the VAST server, and the same engine on the same
  chunks without I/O; their ratio (:func:`end_to_end`);
- ``multi_model``: ``--multi-models N`` light networks over one synthetic volume through
  the VAST server, all in one run (each chunk read once) against N separate runs, side by
  side in interleaved rounds; ``ratio`` is one run's time over the N runs' (:func:`multi_model`);
- ``precision``: fp32, bf16 and int8 side by side on ISBI 2012 sections 15-19 with one
  network (``--checkpoint``, or one trained here on sections 00-14 for
  ``--train-seconds``): throughput and V_rand against the ground truth, and test-time
  augmentation's cost ratio and V_rand gain (:func:`precision_table`).

Timings are the best of ``--repeats`` interleaved rounds (roofline re-measured each round,
best kept), so other processes on a shared machine bias results as little as possible.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from roofline import matmul_flops

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.infer.engine import TiledPredictor, load_predictor
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.train.checkpoint import Checkpoint, load_checkpoint
from membrane_py.train.device import cpu_flags

MODELS: dict[str, UNetConfig] = {"default": UNetConfig(), "light": UNetConfig.light()}


def elapsed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rooflines() -> dict[str, float]:
    """Peak FLOP/s the engines are measured against, keyed by '<device>_<dtype>'."""
    peaks = {"cpu_float32": matmul_flops(torch.device("cpu"), torch.float32, 4096)}
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        peaks["cuda_bfloat16"] = matmul_flops(cuda, torch.bfloat16, 8192)
        peaks["cuda_float32"] = matmul_flops(cuda, torch.float32, 8192)
    return peaks


def flops_per_pixel(cfg: UNetConfig) -> float:
    """Forward FLOPs per input pixel (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    side = 16 * cfg.multiple
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        UNet(cfg).eval()(torch.zeros(1, cfg.in_channels, side, side))
    return counter.get_total_flops() / side**2


def random_checkpoint(cfg: UNetConfig) -> Checkpoint:
    net = UNet(cfg).eval()
    return Checkpoint(state_dict=net.state_dict(), model=cfg.to_dict(),
                      class_names=[f"class_{i + 1}" for i in range(cfg.n_classes)],
                      preprocess=PreprocessConfig().to_dict())


def roofline_key(pred: TiledPredictor) -> str:
    """Which roofline an engine's arithmetic runs against (bf16 autocast on CUDA for torch)."""
    backend = pred.backend
    if backend.device_type != "cuda":
        return "cpu_float32"
    return "cuda_bfloat16" if getattr(backend, "precision", "") == "bf16" else "cuda_float32"


def bench_models(args: argparse.Namespace, em: np.ndarray, peaks: dict[str, float]) -> dict:
    """Throughput and utilisation per model and engine (best of interleaved rounds)."""
    engines = {name: {"backend": name, "precision": "fp32"} for name in args.backends}
    if args.compile:
        engines["torch_compile"] = {"backend": "torch", "compile": True, "precision": "fp32"}
    if not args.fp32_only:  # lower precisions (random weights: speed only, calibrated on em)
        engines["torch_bf16"] = {"backend": "torch", "precision": "bf16"}
        engines["onnx_int8"] = {"backend": "onnx", "precision": "int8",
                                "calibration": lambda: em}
    out = {}
    for model in args.models:
        cfg = MODELS[model]
        ck = random_checkpoint(cfg)
        fpp = flops_per_pixel(cfg)
        preds = {name: load_predictor(ck, device=args.device, tile=args.tile,
                                      batch_size=args.batch_size, **kw)
                 for name, kw in engines.items()}
        best = {}
        for name, pred in preds.items():  # warm-up: compilation, allocator, thread pools
            best[name] = elapsed(lambda p=pred: p.predict(em))
        for _ in range(args.repeats):
            for key, value in rooflines().items():
                peaks[key] = max(peaks.get(key, 0.0), value)
            for name, pred in preds.items():
                best[name] = min(best[name], elapsed(lambda p=pred: p.predict(em)))
        rows = {}
        for name, pred in preds.items():
            grid = pred.grid(em.shape)
            executed = len(grid) * grid.window[0] * grid.window[1]
            rows[name] = {
                "device": pred.backend.device_type, "roofline": roofline_key(pred),
                "tile": pred.tile, "margin": pred.margin, "batch_size": pred.batch_size,
                "seconds": round(best[name], 3), "mb_per_s": round(em.size / best[name] / 1e6, 3),
                "gflop_per_s": round(fpp * em.size / best[name] / 1e9, 1),
                "executed_gflop_per_s": round(fpp * executed / best[name] / 1e9, 1),
            }
        out[model] = {"config": cfg.to_dict(), "flops_per_pixel": round(fpp),
                      "engines": rows}
    return out


def add_utilisation(models: dict, peaks: dict[str, float]) -> None:
    """Achieved / roofline FLOP/s, with the best roofline seen over the whole run."""
    for model in models.values():
        for row in model["engines"].values():
            peak = peaks[row["roofline"]] / 1e9
            row["utilisation"] = round(row["gflop_per_s"] / peak, 3)
            row["executed_utilisation"] = round(row["executed_gflop_per_s"] / peak, 3)


def end_to_end(args: argparse.Namespace) -> dict:
    """A whole synthetic volume through the VAST server (chunks + context -> engine -> PNG
    tiles, pyramid, .vsvi) against the same engine on the same padded chunks with no I/O.

    Both sides use one engine object (the runner's own setting: one tile per chunk plus
    margin), so the ratio measures what reading, writing and the pipeline cost on top.
    """
    import tempfile

    from membrane_py.predict.job import PredictJob
    from membrane_py.predict.runner import run_prediction
    from membrane_py.train.checkpoint import save_checkpoint
    from membrane_py.volumes.synthetic import make_synthetic
    from mock_vast_server.launch import start_server

    z, size, margin = args.e2e_sections, args.e2e_size, 64
    chunk = [min(16, z), 1024, 1024]
    ck = random_checkpoint(MODELS[args.e2e_model])
    pred = load_predictor(ck, backend=args.e2e_backend, device=args.device,
                          tile=max(chunk[1:]) + 2 * margin, margin=0)
    em = make_synthetic((z, size, size), seed=0).em
    padded = [np.pad(em[z0:z0 + chunk[0], y0:y0 + chunk[1], x0:x0 + chunk[2]],
                     ((0, 0), (margin, margin), (margin, margin)), mode="reflect")
              for z0 in range(0, z, chunk[0]) for y0 in range(0, size, chunk[1])
              for x0 in range(0, size, chunk[2])]
    pred.predict(padded[0][:1])  # warm-up
    model_s = e2e_s = float("inf")
    with tempfile.TemporaryDirectory() as tmp, \
            start_server(f"synthetic:{z}x{size}x{size}", state_dir=f"{tmp}/state") as srv:
        ckpt = save_checkpoint(f"{tmp}/model.pt", ck)
        for run in range(args.e2e_repeats):  # interleaved, best of each
            model_s = min(model_s, elapsed(lambda: [pred.predict(p) for p in padded]))
            job = PredictJob(checkpoint=str(ckpt), source=f"vast://{srv.host}:{srv.port}",
                             out=f"{tmp}/out{run}", chunk=chunk, margin=margin,
                             device=args.device)
            result = run_prediction(job, predictor=pred)
            e2e_s = min(e2e_s, result.seconds)
    mb = em.nbytes / 1e6
    return {"volume": [z, size, size], "model": args.e2e_model, "backend": args.e2e_backend,
            "chunk": chunk, "margin": margin, "tiles_written": result.tiles_written,
            "pyramid_tiles": result.pyramid_tiles,
            "repeats": args.e2e_repeats, "model_only_s": round(model_s, 2),
            "end_to_end_s": round(e2e_s, 2), "model_only_mb_per_s": round(mb / model_s, 3),
            "end_to_end_mb_per_s": round(mb / e2e_s, 3), "ratio": round(model_s / e2e_s, 3),
            "aim_ratio": 0.85}


def multi_model(args: argparse.Namespace) -> dict:
    """N models in one read (``membrane predict --model a --model b ...``) against N
    separate single-model runs of the same volume; best of ``--multi-repeats`` interleaved
    rounds (alternating which side goes first), each into fresh folders. Both sides'
    times include loading the models (``PredictResult.seconds``)."""
    import tempfile

    from membrane_py.predict.job import PredictJob
    from membrane_py.predict.runner import run_prediction
    from membrane_py.train.checkpoint import save_checkpoint
    from mock_vast_server.launch import start_server

    n, z, size = args.multi_models, args.multi_sections, args.multi_size
    one = many = float("inf")
    rounds: list[list[float]] = []  # [one read, separate runs] seconds per round
    with tempfile.TemporaryDirectory() as tmp, \
            start_server(f"synthetic:{z}x{size}x{size}", state_dir=f"{tmp}/state") as srv:
        models = []
        for i in range(n):
            torch.manual_seed(i)
            models.append(str(save_checkpoint(f"{tmp}/model{i}.pt",
                                              random_checkpoint(MODELS["light"]))))

        def job(checkpoint: str | list[str], out: str) -> PredictJob:
            return PredictJob(checkpoint=checkpoint, source=f"vast://{srv.host}:{srv.port}",
                              out=out, chunk=[min(16, z), 1024, 1024], device=args.device)

        for r in range(args.multi_repeats):  # interleaved, which goes first alternates
            sides = [lambda r=r: run_prediction(job(models, f"{tmp}/one{r}")).seconds,
                     lambda r=r: sum(run_prediction(job(m, f"{tmp}/sep{r}_{i}")).seconds
                                     for i, m in enumerate(models))]
            times = [side() for side in (sides if r % 2 == 0 else sides[::-1])]
            t_one, t_many = times if r % 2 == 0 else times[::-1]
            rounds.append([round(t_one, 2), round(t_many, 2)])
            one, many = min(one, t_one), min(many, t_many)
    return {"models": n, "model": "light", "volume": [z, size, size],
            "repeats": args.multi_repeats, "one_read_s": round(one, 2),
            "separate_runs_s": round(many, 2), "ratio": round(one / many, 3),
            "rounds_one_vs_separate_s": rounds}


ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


def isbi(sections: range) -> tuple[np.ndarray, list[np.ndarray]]:
    """ISBI 2012 EM (z, y, x) and class labels (1 interior, 2 membrane) of ``sections``."""
    from membrane_py.augment import labels as L
    from membrane_py.augment.labels import convert_labels

    em = np.stack([L.read_image(ISBI / "images" / f"{i:02d}.png") for i in sections])
    raw = [L.decode_label_image(L.read_image(ISBI / "labels" / f"{i:02d}.png"))
           for i in sections]
    return em, convert_labels(raw, "isbi")[0]


def train_isbi(seconds: float, out: Path) -> Path:
    """A light U-Net trained on ISBI 00-14 for about ``seconds`` (weighted_ce, cosine)."""
    from membrane_py.augment.dataset import OnTheFlyPatchDataset
    from membrane_py.augment.transforms import AugmentConfig
    from membrane_py.events import Cancelled, CancelToken
    from membrane_py.train.config import TrainJob
    from membrane_py.train.trainer import train_model

    em, labels = isbi(range(15))
    cfg = TrainJob(out_dir=str(out), name="isbi", patch_size=128, batch_size=8, epochs=1000,
                   depth=4, base_filters=16, loss="weighted_ce", device="cpu",
                   voxel_size=[50.0, 4.0, 4.0], log_every=5)
    data = OnTheFlyPatchDataset(list(em), labels, 128, 64, cfg.preprocess_config,
                                AugmentConfig(), seed=0)
    token, t0 = CancelToken(), time.perf_counter()

    def budget(_event) -> None:
        if time.perf_counter() - t0 > seconds:
            token.cancel()

    with contextlib.suppress(Cancelled):
        train_model(data, None, cfg, n_classes=2, progress=budget, cancel=token)
    return cfg.last_path


def v_rand(probs: np.ndarray, labels: list[np.ndarray]) -> float:
    """Mean V_rand (threshold 0.5 + watershed, as ``evaluate``) over sections."""
    from membrane_py.train.metrics import membrane_scores

    return float(np.mean([membrane_scores(p[1], gt)["v_rand"]
                          for p, gt in zip(probs, labels, strict=True)]))


def precision_table(args: argparse.Namespace) -> dict:
    """fp32 (ONNX Runtime, the CPU default; PyTorch too), bf16 (PyTorch autocast) and int8
    (ONNX Runtime QDQ, calibrated on the predicted sections) on ISBI 15-19, best of
    ``--repeats`` interleaved rounds; then TTA (4 flips, all 8) at fp32."""
    import tempfile

    em, labels = isbi(range(15, 20))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else train_isbi(
            args.train_seconds, Path(args.train_out or tmp))
        kinds = {"fp32": {"precision": "fp32"},
                 "fp32_torch": {"precision": "fp32", "backend": "torch"},
                 "bf16": {"precision": "bf16"},
                 "int8": {"precision": "int8", "calibration": lambda: em},
                 "fp32_tta4": {"precision": "fp32", "tta": 4},
                 "fp32_tta8": {"precision": "fp32", "tta": 8}}
        preds = {k: load_predictor(ckpt, device=args.device, **kw) for k, kw in kinds.items()}
        probs = {k: p.predict(em) for k, p in preds.items()}  # warm-up and the scored output
        best = dict.fromkeys(preds, float("inf"))
        for _ in range(args.repeats):
            for k, p in preds.items():
                best[k] = min(best[k], elapsed(lambda p=p: p.predict(em)))
        model = load_checkpoint(ckpt).model
    scores = {k: v_rand(p, labels) for k, p in probs.items()}
    rows = {k: {"backend": "onnx" if type(preds[k].backend).__name__ == "OnnxBackend"
                else "torch", "seconds": round(best[k], 3),
                "mb_per_s": round(em.size / best[k] / 1e6, 3),
                "speedup_vs_fp32": round(best["fp32"] / best[k], 3),
                "v_rand": round(scores[k], 4),
                "v_rand_minus_fp32": round(scores[k] - scores["fp32"], 4),
                "max_abs_prob_diff_vs_fp32": round(float(np.abs(probs[k] - probs["fp32"]).max()),
                                                   4)}
            for k in kinds}
    return {"data": "ISBI 2012 sections 15-19 (5 x 512^2)", "model": model,
            "checkpoint": args.checkpoint or f"trained here on ISBI 00-14 for "
                                             f"{args.train_seconds:.0f} s",
            "cpu_bf16": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_vnni"}),
            "rows": rows,
            "tta": {k: {"cost_ratio": round(best[k] / best["fp32"], 2),
                        "v_rand_gain": round(scores[k] - scores["fp32"], 4)}
                    for k in ("fp32_tta4", "fp32_tta8")}}


def machine() -> dict:
    import onnxruntime as ort

    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", type=int, default=4)
    p.add_argument("--size", type=int, default=1024, help="section side (px)")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    p.add_argument("--backends", type=lambda s: s.split(","), default=["torch", "onnx"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--e2e-sections", type=int, default=16, help="end-to-end volume depth")
    p.add_argument("--e2e-size", type=int, default=2048, help="end-to-end section side (px)")
    p.add_argument("--e2e-repeats", type=int, default=2)
    p.add_argument("--e2e-model", default="light", choices=list(MODELS))
    p.add_argument("--e2e-backend", default="onnx", choices=["torch", "onnx"])
    p.add_argument("--skip-models", action="store_true", help="only the end-to-end run")
    p.add_argument("--fp32-only", action="store_true", help="models: no bf16 / int8 engines")
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end run")
    p.add_argument("--multi-models", type=int, default=2,
                   help="N for the N-models-in-one-read section (0: skip it)")
    p.add_argument("--multi-sections", type=int, default=4)
    p.add_argument("--multi-size", type=int, default=1024)
    p.add_argument("--multi-repeats", type=int, default=2)
    p.add_argument("--multi-only", action="store_true", help="only the multi-model section")
    p.add_argument("--precision-only", action="store_true",
                   help="only the precision / TTA table on ISBI 15-19")
    p.add_argument("--checkpoint", default=None, help="precision table: network to use "
                   "(default: train one on ISBI 00-14 for --train-seconds)")
    p.add_argument("--train-seconds", type=float, default=180.0)
    p.add_argument("--train-out", default=None, help="keep the trained network here")
    args = p.parse_args(argv)
    em = np.random.default_rng(0).integers(0, 256, (args.sections, args.size, args.size),
                                           dtype=np.uint8)
    peaks: dict[str, float] = {}
    result = {"benchmark": "predict", "input": list(em.shape), "repeats": args.repeats,
              "machine": machine()}
    if args.precision_only:
        return {**result, "precision": precision_table(args)}
    if args.multi_only:
        return {**result, "multi_model": multi_model(args)}
    if not args.skip_models:
        result["models"] = bench_models(args, em, peaks)
        add_utilisation(result["models"], peaks)
        result["roofline_gflop_per_s"] = {k: round(v / 1e9, 1) for k, v in peaks.items()}
    if not args.skip_e2e:
        result["end_to_end"] = end_to_end(args)
    if args.multi_models > 0:
        result["multi_model"] = multi_model(args)
    if ISBI.is_dir():
        result["precision"] = precision_table(args)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
