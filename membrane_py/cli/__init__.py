"""The `membrane` command: one sub-command per workflow step, built on the same job specs
and functions as the GUI and the Python API. Each module registers its commands on `app`;
heavy imports happen inside each command so `membrane --help` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="membrane-py: membrane, organelle and neuron segmentation of EM volumes with VAST.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show the full traceback of errors")
         ) -> None:
    """membrane-py: membrane, organelle and neuron segmentation of EM volumes with VAST."""
    from membrane_py.cli.render import set_debug

    set_debug(debug)


@app.command()
def version() -> None:
    """Print the membrane-py version."""
    from membrane_py import __version__

    typer.echo(__version__)


def _register() -> None:
    """Attach every command module to `app` (one line per workflow step)."""
    from membrane_py.cli import (
        data,
        ffn,
        follow,
        groundtruth,
        gui,
        instances,
        onnx,
        predict,
        run,
        suggest,
        training,
        worker,
    )

    for module in (data, groundtruth, instances, onnx, predict, follow, suggest, run, training,
                   worker, ffn, gui):
        module.register(app)


_register()
