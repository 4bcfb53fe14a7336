"""`membrane suggest`: rank the regions most worth annotating next (CSV, VAST skeleton)."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import BOX, SAVE_JOB, box_option, spec_or_exit
from membrane_py.cli.render import execute
from membrane_py.vastapi.address import DEFAULT_VAST


def suggest(
    checkpoint: Path = typer.Argument(None, help="trained checkpoint (.pt) or .onnx model: "
                                      "predict first (omit with --map)"),
    map: Path = typer.Option(None, "--map", help="rank this layer of an earlier prediction "
                             "instead of predicting: its uncertainty.vsvi (written with "
                             "--uncertainty), or with --score instability its "
                             "probability.vsvi"),
    score: str = typer.Option("uncertainty", help="rank regions by 'uncertainty' (the "
                              "mean of the uncertainty layer) or 'instability' (the share "
                              "of pixels whose membrane call joins or splits cells)"),
    source: str = typer.Option(DEFAULT_VAST, help="EM to predict: vast://HOST:PORT, "
                               "'synthetic[:ZxYxX]', an image folder, .tif, .h5, .zarr or .vsvi"),
    layer: int = typer.Option(0, help="VAST EM layer number (0-based)"),
    out: Path = typer.Option(Path("suggestions"), help="output folder: the predicted layers "
                             "and suggestions.csv"),
    box: str = BOX,
    k: int = typer.Option(10, "--k", "-k", help="how many regions to suggest"),
    size: int = typer.Option(256, help="side of a region (mip-0 px)"),
    spacing: int = typer.Option(None, help="suggestions are at least this far apart in x or "
                                "y (mip-0 px; default: --size)..."),
    z_spacing: int = typer.Option(3, help="...or this many sections apart"),
    sample: float = typer.Option(1.0, help="draw the regions at random with probability "
                                 "proportional to score^SAMPLE: more kinds of place "
                                 "than the top-scored alone (larger: closer to --top-k)"),
    top_k: bool = typer.Option(False, "--top-k", help="take the top-scored regions "
                               "instead of sampling"),
    seed: int = typer.Option(0, help="the random seed of the sampling"),
    tta: int = typer.Option(4, help="uncertainty = spread between this many flips/rotations "
                            "(2..8); 1: the entropy of the membrane probability (faster); "
                            "not used by --score instability"),
    mip: int = typer.Option(0, help="mip level to predict at"),
    backend: str = typer.Option("auto", help="auto, torch or onnx"),
    device: str = typer.Option("auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1"),
    vast: str = typer.Option(None, help="send the suggestions to this VAST (vast://HOST:PORT) "
                             "as a skeleton with one node per suggestion"),
    anno_layer: int = typer.Option(None, help="VAST annotation layer for the skeleton "
                                   "(default: the layer 'membrane-py suggestions', made when "
                                   "missing)"),
    load: bool = typer.Option(False, help="also load the predicted probability and "
                              "uncertainty layers into that VAST"),
    overwrite: bool = typer.Option(False, help="replace an earlier, different prediction in "
                                   "--out (another network or score) instead of refusing it"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Suggest where annotating next helps the network most: the most uncertain regions,
    spread out, as a CSV and (with --vast) as skeleton nodes in VAST."""
    from membrane_py.predict.suggest import SuggestJob

    spec = spec_or_exit(
        SuggestJob, checkpoint=None if checkpoint is None else str(checkpoint),
        map=None if map is None else str(map), score=score, source=source, layer=layer,
        out=str(out), box=box_option(box), k=k, size=size, spacing=spacing,
        z_spacing=z_spacing, sample_power=None if top_k else sample, seed=seed, tta=tta, mip=mip,
        backend=backend, device=device, vast=vast, anno_layer=anno_layer, load_in_vast=load,
        overwrite=overwrite)
    execute(spec, save_job)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(suggest)
