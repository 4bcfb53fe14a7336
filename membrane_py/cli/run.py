"""`membrane run FILE.json`: run any job from its saved spec."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.render import execute, fail, one_line


def run(job_file: Path = typer.Argument(..., help="a job spec written by --save-job (JSON)"),
        ) -> None:
    """Run any job from its JSON spec (written by --save-job, the GUI or by hand)."""
    from membrane_py.jobs import load_job

    try:
        spec = load_job(job_file)
    except ValueError as e:
        raise fail(one_line(e)) from None
    execute(spec)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command("run")(run)
