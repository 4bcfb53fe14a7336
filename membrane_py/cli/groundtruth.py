"""Ground-truth conversions (`membrane gt ...`) and training patches (`membrane patches`)."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import (
    AUGMENTATIONS,
    BOX,
    LABEL_FORMAT,
    MAX_CLASSES,
    SAVE_JOB,
    augment_option,
    box_option,
    label_map_option,
    spec_or_exit,
)
from membrane_py.cli.render import execute

gt_app = typer.Typer(help="Ground-truth conversions over folders of label images or stacks.",
                     no_args_is_help=True)

SOURCE_HELP = ("folder of label images, .tif, .h5[:dataset], .zarr, or vast://HOST:PORT for the "
               "segmentation layer of a running VAST")
MIP = typer.Option(0, min=0, help="mip level to read a volume at")
EM_IMAGES = typer.Option(None, help="folder of the EM sections a volume's labels belong to: "
                         "slice z is named after the z-th image, so labels pair with the EM "
                         "by name (default: <volume name>_<z>)")


def _gt(save_job: Path | None, **fields) -> None:
    from membrane_py.augment.groundtruth import GtJob

    execute(spec_or_exit(GtJob, **fields), save_job)


@gt_app.command("membrane")
def gt_membrane(
    input: str = typer.Argument(..., help=SOURCE_HELP),
    output: Path = typer.Argument(..., help="output folder for <name>_border.png"),
    thickness: int = typer.Option(3, min=1, help="membrane band width in pixels"),
    fill_ecs: bool = typer.Option(False, help="label-0 pixels (extracellular space) -> membrane"),
    unknown_id: int = typer.Option(None, help="input id that means unknown; stays 0 in output"),
    mapping: str = typer.Option(None, help="fragment -> body pairs applied first: FILE.h5:DATASET "
                                "(e.g. groundtruth.h5.gz:transforms), .npy or two-column .csv"),
    box: str = BOX,
    mip: int = MIP,
    images: Path = EM_IMAGES,
    save_job: Path = SAVE_JOB,
) -> None:
    """Neuron instance labels -> membrane labels (1 non-membrane, 2 membrane, 0 unknown)."""
    _gt(save_job, conversion="membrane", input=input, output=str(output), thickness=thickness,
        fill_ecs=fill_ecs, unknown_id=unknown_id, mapping=mapping, box=box_option(box), mip=mip,
        images=str(images) if images else None)


@gt_app.command("import")
def gt_import(
    input: str = typer.Argument(..., help=SOURCE_HELP),
    output: Path = typer.Argument(..., help="output folder for <name>_label.png"),
    mode: str = typer.Option("binary", help="binary (two-valued mask such as ISBI's), map "
                             "(--label-map value:class) or values (each non-zero value a class)"),
    membrane_value: int = typer.Option(0, help="binary mode: the value that marks membrane"),
    label_map: str = typer.Option(None, help="map mode: value:class pairs, e.g. '0:2,255:1'"),
    box: str = BOX,
    mip: int = MIP,
    images: Path = EM_IMAGES,
    save_job: Path = SAVE_JOB,
) -> None:
    """Any label encoding -> class PNGs (0 unknown, 1..K), which `patches`, `train` and
    `evaluate` read as classes."""
    _gt(save_job, conversion="import", input=input, output=str(output), mode=mode,
        membrane_value=membrane_value, label_map=label_map_option(label_map),
        box=box_option(box), mip=mip,
        images=str(images) if images else None)


@gt_app.command("skeleton")
def gt_skeleton(
    input: str = typer.Argument(..., help=SOURCE_HELP),
    output: Path = typer.Argument(..., help="output folder for <name>_skel.png"),
    unknown: bool = typer.Option(True, help="the input uses 0 for unknown pixels"),
    filter_size: int = typer.Option(3, help="Gaussian smoothing size: 1 (none), 3 or 5"),
    box: str = BOX,
    mip: int = MIP,
    images: Path = EM_IMAGES,
    save_job: Path = SAVE_JOB,
) -> None:
    """Membrane labels -> skeleton labels (1 background, 2 near the skeleton, 0 unknown)."""
    _gt(save_job, conversion="skeleton", input=input, output=str(output), has_unknown=unknown,
        filter_size=filter_size, box=box_option(box), mip=mip,
        images=str(images) if images else None)


def patches(
    images: Path = typer.Option(..., help="folder of 8-bit EM images"),
    labels: Path = typer.Option(..., help="folder of label images, paired with images by name"),
    out_images: Path = typer.Option(..., help="output folder for EM patches"),
    out_labels: Path = typer.Option(..., help="output folder for label patches"),
    patch_size: int = typer.Option(256, help="patch side in pixels"),
    density: float = typer.Option(100.0, help="patches per 1024^2 annotated pixels"),
    rotate: bool = typer.Option(True, help="rotate patches by random angles"),
    downsample: int = typer.Option(1, min=1, help="shrink EM (mean) and labels (nearest) first"),
    contrast: str = typer.Option("none", help="CLAHE baked into patches: none, image or tile"),
    label_format: str = LABEL_FORMAT,
    label_map: str = typer.Option(None, help="raw value -> class, e.g. ISBI '0:2,255:1' "
                                  "(instead of --label-format)"),
    n_classes: int = typer.Option(None, help="number of classes K (default: largest present)"),
    max_classes: int = MAX_CLASSES,
    augment: bool = typer.Option(False, help="apply all augmentations while writing"),
    augmentations: str = AUGMENTATIONS,
    seed: int = typer.Option(0, help="random seed (same seed, same patches)"),
    overwrite: bool = typer.Option(False, help="replace patches already in the output folders"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Cut saturated training patches (mEMbrain layout plus manifest.json)."""
    from membrane_py.augment.patches import PatchJob
    from membrane_py.augment.transforms import AugmentConfig

    execute(spec_or_exit(
        PatchJob, images=str(images), labels=str(labels), out_images=str(out_images),
        out_labels=str(out_labels), patch_size=patch_size, density=density, rotate=rotate,
        downsample=downsample, contrast=contrast, label_format=label_format,
        label_map=label_map_option(label_map), n_classes=n_classes, max_classes=max_classes,
        augment=AugmentConfig.all_on() if augment else augment_option(False, augmentations),
        seed=seed,
        overwrite=overwrite), save_job)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.add_typer(gt_app, name="gt")
    app.command()(patches)
