"""ONNX export command (`membrane export-onnx`)."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import SAVE_JOB, spec_or_exit
from membrane_py.cli.render import execute


def export_onnx(
    checkpoint: Path = typer.Argument(..., help="a trained checkpoint (.pt) or 'starter' (the "
                                  "shipped membrane model)"),
    out: Path = typer.Argument(..., help="the ONNX model to write (.onnx)"),
    opset: int = typer.Option(17, help="ONNX opset version"),
    check: bool = typer.Option(True, help="run onnx.checker and compare ONNX Runtime with "
                               "PyTorch on random, synthetic and (--sample) real input"),
    sample: Path = typer.Option(None, help="an 8-bit EM image to include in the comparison"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Export a checkpoint to ONNX (dynamic batch and size; class names, preprocessing and
    architecture in the metadata) for ONNX Runtime or other tools."""
    from membrane_py.transfer.onnx import ExportOnnxJob

    execute(spec_or_exit(ExportOnnxJob, checkpoint=str(checkpoint), out=str(out), opset=opset,
                         check=check, sample=str(sample) if sample else None), save_job)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command("export-onnx")(export_onnx)
