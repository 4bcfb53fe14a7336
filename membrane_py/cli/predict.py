"""`membrane predict`: run a trained network over a volume on the fly (VAST or files)."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.render import Bar
from membrane_py.vastapi.address import DEFAULT_VAST


def _ints(text: str, n: int, what: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3], exactly ``n`` numbers, or a BadParameter naming ``what``."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise typer.BadParameter(f"{what} must be {n} comma-separated integers, got {text!r}")
    return values


def predict(
    checkpoint: Path = typer.Argument(None, help="trained checkpoint (.pt) or .onnx model"),
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
    region: str = typer.Option("volume", help="volume, box, view (cube around VAST's view), "
                               "anchors (cube per skeleton anchor) or nodes (per skeleton node)"),
    box: str = typer.Option(None, help="for --region box: minx,maxx,miny,maxy,minz,maxz "
                            "(mip 0, inclusive, as VAST shows them)"),
    size: int = typer.Option(2048, help="cube width in x and y (mip-0 px) for view/anchors/nodes"),
    depth: int = typer.Option(16, help="cube depth in sections for view/anchors/nodes"),
    point: list[str] = typer.Option(None, help="x,y,z (mip 0) to use instead of asking VAST; "
                                    "repeat for several cubes"),
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
    chunk: str = typer.Option("16,1024,1024", help="z,y,x sections and pixels per read"),
    margin: int = typer.Option(64, help="context pixels read around each chunk"),
    tile: int = typer.Option(1024, help="side of the written PNG tiles"),
    job: Path = typer.Option(None, help="read the whole job from this JSON (other options are "
                             "ignored)"),
    save_job: Path = typer.Option(None, help="also write the job spec as JSON here"),
) -> None:
    """Predict membranes (or any trained classes) and write VAST tiles plus a .vsvi."""
    from membrane_py.predict.job import PredictJob, RegionSpec
    from membrane_py.predict.runner import run_prediction
    from membrane_py.vastapi.client import VastError

    try:
        if job is not None:
            spec = PredictJob.from_json(job.read_text())
        elif checkpoint is None:
            raise typer.BadParameter("give a CHECKPOINT (or --job job.json)")
        else:
            spec = PredictJob(
                checkpoint=str(checkpoint), source=source, out=str(out), layer=layer, vast=vast,
                backend=backend, device=device, mip=mip,
                region=RegionSpec(mode=region, box=_ints(box, 6, "--box") if box else None,
                                  size_xy=size, depth=depth, anno_layer=anno_layer,
                                  points=[_ints(p, 3, "--point") for p in point or []] or None),
                layer_name=layer_name, outputs=[o.strip() for o in outputs.split(",")],
                prob_class=prob_class, pyramid=pyramid, zarr=zarr, load_in_vast=load,
                skip_blank=skip_blank, blank_entropy=blank_entropy, overwrite=overwrite,
                chunk=_ints(chunk, 3, "--chunk"), margin=margin, tile=tile)
        if save_job is not None:
            save_job.write_text(spec.to_json())
        with Bar() as bar:
            result = run_prediction(spec, progress=bar)
    except (ValueError, FileNotFoundError, ConnectionError, VastError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"{result.tiles_written} tiles written, {result.tiles_blank} blank, "
               f"{result.tiles_resumed} already done, {result.pyramid_tiles} pyramid tiles; "
               f"{result.megabytes_read:.0f} MB read in {result.seconds:.1f} s")
    typer.echo(f"output folder: {result.out}")
    for path in result.descriptors:
        typer.echo(f"VAST descriptor: {path}")
    for path in result.zarr:
        typer.echo(f"OME-Zarr: {path}")
    if result.layers:
        typer.echo(f"loaded into VAST as layer(s) {', '.join(map(str, result.layers))}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(predict)
