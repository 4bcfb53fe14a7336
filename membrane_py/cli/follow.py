"""`membrane follow`: predict what the user looks at in VAST while they browse."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import SAVE_JOB, ints_option, spec_or_exit
from membrane_py.cli.render import execute
from membrane_py.vastapi.address import DEFAULT_VAST


def follow(
    checkpoint: Path = typer.Argument(..., help="trained checkpoint (.pt) or .onnx model"),
    vast: str = typer.Option(DEFAULT_VAST, help="the VAST whose view to follow, "
                             "vast://HOST:PORT"),
    source: str = typer.Option(None, help="read the EM from this volume instead of VAST "
                               "(image folder, .tif, .h5, .zarr, .vsvi; same size as VAST's)"),
    layer: int = typer.Option(0, help="VAST EM layer number (0-based)"),
    out: Path = typer.Option(Path("follow"), help="output folder (one mip<m> folder per "
                             "predicted mip inside)"),
    poll: float = typer.Option(0.5, help="seconds between checks of VAST's view"),
    margin: int = typer.Option(1, help="rings of tiles predicted around the visible ones"),
    sections: int = typer.Option(1, help="sections above and below the current one"),
    viewport: str = typer.Option("1920,1080", help="VAST's window as width,height in screen "
                                 "pixels (the API does not tell it)"),
    mip: int = typer.Option(None, help="predict at this mip whatever VAST's zoom (default: "
                            "the displayed mip)"),
    zoom_per_mip: int = typer.Option(1, help="VAST zoom steps per mip level"),
    max_seconds: float = typer.Option(None, help="stop after this many seconds (default: "
                                      "until Ctrl-C)"),
    load: bool = typer.Option(True, help="load the outputs into VAST and refresh them as "
                              "tiles land"),
    layer_name: str = typer.Option("membrane prediction", help="layer name shown in VAST "
                                   "(' (mip m)' is added)"),
    tile: int = typer.Option(1024, help="side of the written PNG tiles"),
    context: int = typer.Option(64, help="context pixels read around each tile"),
    backend: str = typer.Option("auto", help="auto, torch or onnx"),
    device: str = typer.Option("auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1"),
    tta: int = typer.Option(1, help="test-time augmentation (1 off .. 8)"),
    precision: str = typer.Option("auto", help="fp32, bf16, int8 or auto"),
    pyramid: bool = typer.Option(True, help="build the mip pyramid above each tile"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Predict around VAST's view as the user browses, nearest tiles first; Ctrl-C stops."""
    from membrane_py.predict.follow import FollowJob
    from membrane_py.predict.job import PredictJob

    predict = spec_or_exit(
        PredictJob, checkpoint=str(checkpoint), source=source or vast,
        vast=vast if source else None, out=str(out), layer=layer, backend=backend,
        device=device, layer_name=layer_name, load_in_vast=load, margin=context, tile=tile,
        chunk=[1, tile, tile], tta=tta, precision=precision, pyramid=pyramid)
    spec = spec_or_exit(FollowJob, predict=predict,
                        viewport=ints_option(viewport, 2, "--viewport"), sections=sections,
                        margin=margin, poll=poll, max_seconds=max_seconds, mip=mip,
                        zoom_per_mip=zoom_per_mip)
    execute(spec, save_job)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(follow)
