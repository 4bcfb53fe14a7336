"""ONNX export command (`membrane export-onnx`)."""

from __future__ import annotations

from pathlib import Path

import typer


def export_onnx(
    checkpoint: Path = typer.Argument(..., help="a trained checkpoint (.pt)"),
    out: Path = typer.Argument(..., help="the ONNX model to write (.onnx)"),
    opset: int = typer.Option(17, help="ONNX opset version"),
    check: bool = typer.Option(True, help="run onnx.checker and compare ONNX Runtime with "
                               "PyTorch on random, synthetic and (--sample) real input"),
    sample: Path = typer.Option(None, help="an 8-bit EM image to include in the comparison"),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch and size; class names, preprocessing and
    architecture in the metadata) for ONNX Runtime or other tools."""
    from membrane_py.transfer.onnx import export_onnx as export

    image = None
    if sample is not None:
        from membrane_py.volumes.stacks import read_image

        image = read_image(sample)
        if image.dtype.name != "uint8" or image.ndim != 2:
            raise typer.BadParameter(f"{sample} is {image.dtype} {image.shape}, not 8-bit "
                                     "grayscale", param_hint="--sample")
    report = export(checkpoint, out, opset=opset, check=check, sample=image)
    typer.echo(f"wrote {report.path} (opset {report.opset})")
    for name, diff in report.max_abs_diff.items():
        typer.echo(f"max abs difference of logits vs PyTorch, {name} input: {diff:.3g}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command("export-onnx")(export_onnx)
