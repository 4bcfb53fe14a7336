"""Commands around data: serve a volume over the VAST protocol, run the demo."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.render import EXIT_INTERRUPTED, Renderer, fail, one_line, user_errors
from mock_vast_server.limits import Limits

_LIMITS = Limits()


def demo(
    out: Path = typer.Option(Path("demo_output"), help="folder for everything the demo writes"),
) -> None:
    """Run the main job on bundled synthetic data (train, serve, predict on the fly, load
    into the server, score) and print where the results are."""
    from membrane_py.demo import DemoConfig, run_demo
    from membrane_py.events import Cancelled

    try:
        with Renderer() as bar:
            r = run_demo(DemoConfig(out=out), progress=bar)
    except (KeyboardInterrupt, Cancelled):  # training turns Ctrl-C into Cancelled
        raise fail("interrupted; run the demo again to start it over",
                   EXIT_INTERRUPTED) from None
    except user_errors() as e:
        raise fail(one_line(e)) from None
    typer.echo(f"trained a small U-Net in {r.train_seconds:.0f} s: {r.checkpoint}")
    typer.echo(f"predicted {r.n_tiles} tiles through the VAST protocol in "
               f"{r.predict_seconds:.0f} s ({r.megabytes:.0f} MB of EM read)")
    typer.echo(f"prediction tiles:        {r.prediction_dir}")
    typer.echo(f"VAST descriptor:         {r.descriptor}")
    status = "byte-identical to the tiles" if r.identical else "DIFFERENT from the tiles (bug!)"
    typer.echo(f"server loaded the descriptor as layer {r.layer_nr}; read back: {status}")
    typer.echo(f"validation against the synthetic ground truth: V_rand {r.v_rand:.4f}, "
               f"pixel error {100 * r.pixel_error:.2f}%")
    typer.echo(f"preview (EM | probability | instances): {r.preview}")
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
    allow_load: list[Path] = typer.Option(
        None, "--allow-load", help="folder VAST clients may load layers from (repeatable); the "
        "volume's folder and the state folder are always allowed"),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="allow a non-loopback --host; the VAST protocol has no "
        "authentication, so anyone who reaches the port can read and change the data"),
    port: int = typer.Option(22081, help="TCP port, 0..65535 (VAST's default is 22081; 0 picks "
                             "a free one)"),
    voxel_size: tuple[float, float, float] = typer.Option(
        None, help="voxel size in nm as X Y Z, VAST's order (default: from the data, else 1 1 1)"),
    max_connections: int = typer.Option(_LIMITS.max_connections,
                                        help="concurrent connections; more are closed"),
    idle_timeout: float = typer.Option(_LIMITS.idle_timeout,
                                       help="close connections idle this many seconds"),
    stall_timeout: float = typer.Option(
        _LIMITS.stall_timeout,
        help="close connections that stop sending in the middle of a request this long"),
) -> None:
    """Serve a volume over the VAST remote-control protocol (for users without VAST)."""
    from mock_vast_server.server import ServeConfig
    from mock_vast_server.server import serve as run_server

    try:
        limits = Limits(max_connections=max_connections, idle_timeout=idle_timeout,
                        stall_timeout=stall_timeout)
    except ValueError as exc:
        typer.echo(f"membrane serve: error: {exc}", err=True)
        raise typer.Exit(2) from exc
    config = ServeConfig(volume=volume, labels=labels, skeletons=skeletons, state=state,
                         host=host, port=port, voxel_size_xyz=voxel_size,
                         allow_remote=allow_remote, limits=limits,
                         allow_load=tuple(allow_load or ()))
    raise typer.Exit(run_server(config, prog="membrane serve"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(demo)
    app.command()(serve)
