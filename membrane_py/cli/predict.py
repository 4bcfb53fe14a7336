"""`membrane predict`: run a trained network over a volume on the fly (VAST or files)."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import (
    ADAPT_BN,
    BOX,
    CLIP,
    POINT,
    SAVE_JOB,
    VOXEL_SIZE,
    box_option,
    ints_option,
    points_option,
    spec_or_exit,
)
from membrane_py.cli.render import execute, fail
from membrane_py.vastapi.address import DEFAULT_VAST


def predict(
    checkpoint: Path = typer.Argument(None, help="trained checkpoint (.pt), .onnx model or "
                                      "'starter' (the membrane model shipped with membrane-py); "
                                      "or give --model"),
    model: list[Path] = typer.Option(None, help="a model to run (repeatable): several models "
                                     "share each read chunk, each writing into OUT/<model "
                                     "file name without extension>/"),
    source: str = typer.Option(DEFAULT_VAST, help="vast://HOST:PORT, 'synthetic[:ZxYxX]', an "
                               "image folder, .tif, .h5[:dataset], .zarr or .vsvi"),
    layer: int = typer.Option(0, help="VAST EM layer number (0-based)"),
    out: Path = typer.Option(Path("predictions"), help="output folder"),
    vast: str = typer.Option(None, help="VAST for view/skeletons/--load when the source is a "
                             "file, e.g. vast://127.0.0.1:22081"),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime on CPU, PyTorch on GPU), "
                                "torch or onnx"),
    device: str = typer.Option("auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1"),
    mip: int = typer.Option(0, help="mip level to predict at (x and y halved mip times)"),
    region: str = typer.Option(None, help="volume, box, view (cube around VAST's view), anchors "
                               "(cube per skeleton anchor) or nodes (per skeleton node); "
                               "default: box when --box is given, else volume"),
    box: str = BOX,
    clip: bool = CLIP,
    size: int = typer.Option(2048, help="cube width in x and y (mip-0 px) for view/anchors/nodes"),
    depth: int = typer.Option(16, help="cube depth in sections for view/anchors/nodes"),
    point: list[str] = POINT,
    anno_layer: int = typer.Option(None, help="VAST annotation layer with the skeletons "
                                   "(default: the selected one)"),
    layer_name: str = typer.Option("membrane prediction", help="layer name shown in VAST"),
    outputs: str = typer.Option("probability", help="comma-separated: probability, classes, "
                                "rgb (3-class networks), per_class"),
    prob_class: str = typer.Option(None, help="class of the probability output, name or "
                                   "number (default: membrane, else the last class)"),
    pyramid: bool = typer.Option(True, help="build the mip pyramid above the predicted mip"),
    zarr: bool = typer.Option(False, help="also write OME-Zarr copies"),
    load: bool = typer.Option(False, help="load the outputs into VAST as layers at the start, "
                              "so tiles appear while the run continues"),
    skip_blank: bool = typer.Option(True, help="skip blank tiles (entropy below "
                                    "--blank-entropy bits)"),
    blank_entropy: float = typer.Option(1.0, help="grey-level entropy (bits) below which a tile "
                                        "is blank"),
    overwrite: bool = typer.Option(False, help="recompute tiles that already exist"),
    chunk: str = typer.Option("1024,1024,16", help="x,y,z pixels and sections per read (at "
                              "--mip; x and y multiples of --tile)"),
    margin: int = typer.Option(64, help="context pixels read around each chunk"),
    tile: int = typer.Option(1024, help="side of the written PNG tiles"),
    voxel_size: tuple[float, float, float] = VOXEL_SIZE,
    scheduler: str = typer.Option(None, help="run the chunks as Dask tasks: local (one worker "
                                  "process per core), local:N (N workers) or tcp://HOST:PORT "
                                  "(a running cluster); default: this process"),
    tta: int = typer.Option(1, help="test-time augmentation: average over this many of the 8 "
                            "flips/rotations (1 off, 4 flips, 8 all; costs tta x the time)"),
    uncertainty: bool = typer.Option(False, help="also write an 'uncertainty' layer: the "
                                     "spread between the augmented predictions with --tta "
                                     "2..8, else the entropy of the probability"),
    precision: str = typer.Option("auto", help="fp32, bf16 (PyTorch autocast), int8 (ONNX "
                                  "Runtime, quantised and cached next to the checkpoint) or "
                                  "auto (bf16 on CUDA, and on CPUs with AVX-512 BF16 / AMX "
                                  "for networks of >= 32 filters; else fp32)"),
    calibration: str = typer.Option(None, help="int8: calibrate on this EM (image folder or "
                                    "volume) instead of the volume being predicted"),
    adapt_bn: bool | None = ADAPT_BN,
    save_job: Path = SAVE_JOB,
) -> None:
    """Predict membranes (or any trained classes) and write VAST tiles plus a .vsvi."""
    from membrane_py.predict.job import PredictJob, RegionSpec

    models = [str(m) for m in ([checkpoint] if checkpoint else []) + list(model or [])]
    if not models:
        raise fail("give the model to run: membrane predict MODEL.pt (or --model A.pt "
                   "--model B.onnx)")
    if box is not None and region not in (None, "box"):
        raise fail(f"--box applies to --region box, not --region {region}; drop one of them")
    regions = spec_or_exit(RegionSpec, mode=region or ("box" if box else "volume"),
                           box=box_option(box), size_xy=size, depth=depth,
                           anno_layer=anno_layer, points=points_option(point), clip=clip)
    spec = spec_or_exit(
        PredictJob, checkpoint=models[0] if len(models) == 1 else models, source=source,
        out=str(out), layer=layer,
        vast=vast, backend=backend, device=device, mip=mip, region=regions,
        layer_name=layer_name, outputs=[o.strip() for o in outputs.split(",")],
        prob_class=prob_class, pyramid=pyramid, zarr=zarr, load_in_vast=load,
        skip_blank=skip_blank, blank_entropy=blank_entropy, overwrite=overwrite,
        chunk=ints_option(chunk, 3, "--chunk")[::-1], margin=margin, tile=tile,
        voxel_size=list(voxel_size) if voxel_size else None, scheduler=scheduler, tta=tta,
        uncertainty=uncertainty, precision=precision, calibration=calibration,
        adapt_bn=adapt_bn)
    execute(spec, save_job)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(predict)
