"""Commands around data: serve a volume over the VAST protocol, run the demo."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.render import Renderer


def demo(
    out: Path = typer.Option(Path("demo_output"), help="folder for everything the demo writes"),
) -> None:
    """Run the main job on bundled synthetic data (train, serve, predict on the fly, load
    into the server, score) and print where the results are."""
    from membrane_py.demo import DemoConfig, run_demo

    with Renderer() as bar:
        r = run_demo(DemoConfig(out=out), progress=bar)
    typer.echo(f"trained a small U-Net in {r.train_seconds:.0f} s: {r.checkpoint}")
    typer.echo(f"predicted {r.n_tiles} tiles through the VAST protocol in "
               f"{r.predict_seconds:.0f} s ({r.megabytes:.0f} MB of EM read)")
    typer.echo(f"prediction tiles:        {r.prediction_dir}")
    typer.echo(f"VAST descriptor:         {r.descriptor}")
    status = "byte-identical to the tiles" if r.identical else "DIFFERENT from the tiles (bug!)"
    typer.echo(f"server loaded the descriptor as layer {r.layer_nr}; read back: {status}")
    typer.echo(f"validation against the synthetic ground truth: V_rand {r.v_rand:.4f}, "
               f"pixel error {100 * r.pixel_error:.2f}%")
    if not r.identical:
        raise typer.Exit(1)


def serve(
    volume: str = typer.Option(
        "synthetic", help="'synthetic[:ZxYxX[:SEED]]', an image folder, .tif, .h5[:dataset], "
        ".zarr or .vsvi"),
    labels: str = typer.Option(None, help="ground-truth labels served as a segmentation layer"),
    skeletons: Path = typer.Option(None, help="skeleton nodes (JSON or CSV) for annotations"),
    state: Path = typer.Option(None, help="folder where painted layers persist"),
    host: str = typer.Option("127.0.0.1", help="interface to bind; keep 127.0.0.1 unless needed"),
    port: int = typer.Option(22081, help="TCP port (VAST's default is 22081)"),
    voxel_size: tuple[float, float, float] = typer.Option(
        None, help="voxel size in nm as Z Y X (default: from the data, else 1 1 1)"),
    allow_load: list[Path] = typer.Option(
        None, "--allow-load", help="folder VAST clients may load layers from (repeatable); the "
        "volume's folder and the state folder are always allowed"),
) -> None:
    """Serve a volume over the VAST remote-control protocol (for users without VAST)."""
    from mock_vast_server.server import main as server_main

    argv = ["--volume", volume, "--host", host, "--port", str(port)]
    for flag, value in (("--labels", labels), ("--skeletons", skeletons), ("--state", state)):
        if value is not None:
            argv += [flag, str(value)]
    if voxel_size is not None:
        argv += ["--voxel-size", *map(str, voxel_size)]
    for folder in allow_load or ():
        argv += ["--allow-load", str(folder)]
    server_main(argv)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(demo)
    app.command()(serve)
