"""Flood-filling networks (`membrane ffn prep|train|infer|import`).

Volumes are any volume form (image folder, .tif, .h5[:dataset], .zarr, synthetic:...) or a
VAST address with a layer; boxes are ``minx,maxx,miny,maxy,minz,maxz`` (mip 0, inclusive);
3-vectors for the model and the partitions are typed ``z,y,x``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import (
    BOX,
    SAVE_JOB,
    box_option,
    floats_option,
    ints_option,
    points_option,
    spec_or_exit,
)
from membrane_py.cli.render import execute, fail, one_line

ffn_app = typer.Typer(help="Flood-filling networks: 3D neuron segmentation.",
                      no_args_is_help=True)

DEPTH = typer.Option(12, min=1, help="residual modules of the network")
FEATURES = typer.Option(32, min=1, help="feature maps per convolution")
FOV = typer.Option("33,33,33", help="field of view z,y,x (odd); sparse z: 17,33,33")
DELTAS = typer.Option("8,8,8", help="FOV step z,y,x; sparse z: 4,8,8")
DEVICE = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ...")


def _model(depth: int, features: int, fov: str, deltas: str):
    from membrane_py.models.ffn import FFNConfig

    return spec_or_exit(FFNConfig, depth=depth, features=features,
                        fov=tuple(ints_option(fov, 3, "--fov")),
                        deltas=tuple(ints_option(deltas, 3, "--deltas")))


@ffn_app.command("prep")
def prep(
    labels: str = typer.Argument(..., help="ground-truth label volume or VAST address"),
    output: Path = typer.Option(..., "--output", "-o", help="coordinates file (.npz)"),
    labels_layer: int = typer.Option(None, help="VAST segmentation layer (default: selected)"),
    box: str = BOX,
    mip: int = typer.Option(0, min=0, help="mip level to read at"),
    radius: str = typer.Option("24,24,24", help="local-mass box radius z,y,x "
                               "(fov//2 + deltas)"),
    margin: str = typer.Option("24,24,24", help="border z,y,x without coordinates"),
    thresholds: str = typer.Option(None, help="partition thresholds (default: the "
                                   "reference's 12)"),
    min_size: int = typer.Option(10000, min=0, help="objects smaller (voxels) are dust"),
    max_per_partition: int = typer.Option(100000, min=1, help="coordinates kept per "
                                          "partition"),
    seed: int = typer.Option(0, help="random seed"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Ground truth -> class-balanced FFN training coordinates."""
    from membrane_py.ffn.prep import THRESHOLDS, FFNPrepJob

    execute(spec_or_exit(
        FFNPrepJob, labels=labels, output=str(output), labels_layer=labels_layer,
        box=box_option(box), mip=mip, radius=tuple(ints_option(radius, 3, "--radius")),
        margin=tuple(ints_option(margin, 3, "--margin")),
        thresholds=floats_option(thresholds, "--thresholds") or list(THRESHOLDS),
        min_size=min_size, max_per_partition=max_per_partition, seed=seed), save_job)


@ffn_app.command("train")
def train(
    image: str = typer.Argument(..., help="EM image volume or VAST address"),
    labels: str = typer.Argument(..., help="its ground-truth label volume"),
    coordinates: Path = typer.Option(..., help="coordinates from `membrane ffn prep`"),
    output: Path = typer.Option(..., "--output", "-o", help="checkpoint (.pt); an existing "
                                "one is resumed"),
    image_layer: int = typer.Option(0, help="VAST image layer"),
    labels_layer: int = typer.Option(None, help="VAST segmentation layer"),
    depth: int = DEPTH,
    features: int = FEATURES,
    fov: str = FOV,
    deltas: str = DELTAS,
    image_mean: float = typer.Option(None, help="normalisation mean (default: measured)"),
    image_stddev: float = typer.Option(None, help="normalisation stddev (default: measured)"),
    steps: int = typer.Option(10000, min=1, help="optimiser steps in total"),
    batch_size: int = typer.Option(4, min=1),
    optimizer: str = typer.Option("sgd", help="sgd, momentum, adam, adagrad or rmsprop"),
    learning_rate: float = typer.Option(0.001),
    momentum: float = typer.Option(0.9),
    clip: float = typer.Option(0.7, help="each gradient entry is clipped to +-clip"),
    checkpoint_every: int = typer.Option(1000, min=1, help="steps between checkpoints"),
    resume: bool = typer.Option(True, help="continue an existing checkpoint at --output"),
    device: str = DEVICE,
    seed: int = typer.Option(0, help="random seed"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Train a flood-filling network (FOV moves with canvas write-back)."""
    from membrane_py.ffn.train import FFNTrainJob

    execute(spec_or_exit(
        FFNTrainJob, image=image, labels=labels, coordinates=str(coordinates),
        output=str(output), image_layer=image_layer, labels_layer=labels_layer,
        model=_model(depth, features, fov, deltas), image_mean=image_mean,
        image_stddev=image_stddev, steps=steps, batch_size=batch_size, optimizer=optimizer,
        learning_rate=learning_rate, momentum=momentum, clip=clip,
        checkpoint_every=checkpoint_every, resume=resume, device=device, seed=seed), save_job)


@ffn_app.command("infer")
def infer(
    image: str = typer.Argument(..., help="EM image volume or VAST address"),
    checkpoint: str = typer.Argument(..., help="FFN checkpoint (.pt) or TensorFlow "
                                     "checkpoint prefix / .index"),
    output: Path = typer.Option(..., "--output", "-o", help=".zarr, .tif, .npz, or a folder "
                                "for RGB tiles with a .vsvi"),
    image_layer: int = typer.Option(0, help="VAST image layer"),
    box: str = BOX,
    mip: int = typer.Option(0, min=0, help="mip level to read at"),
    seed: list[str] = typer.Option(None, help="x,y,z (mip 0) to grow from; repeat; default: "
                                   "peak seeds"),
    mask: str = typer.Option(None, help="volume whose non-zero voxels get no FOV or seed"),
    move_threshold: float = typer.Option(0.9, help="probability the FOV moves at"),
    segment_threshold: float = typer.Option(0.6, help="probability that becomes object"),
    min_segment_size: int = typer.Option(1000, min=0, help="smaller objects are dropped"),
    min_boundary_dist: str = typer.Option("1,1,1", help="z,y,x: no seed this near an object"),
    init_activation: float = typer.Option(0.95),
    pad_value: float = typer.Option(0.05),
    freeze: bool = typer.Option(True, help="disconnected-voxel freezing"),
    depth: int = DEPTH,
    features: int = FEATURES,
    fov: str = FOV,
    deltas: str = DELTAS,
    image_mean: float = typer.Option(None, help="override the checkpoint's mean"),
    image_stddev: float = typer.Option(None, help="override the checkpoint's stddev"),
    concurrency: int = typer.Option(0, min=0, help="objects grown side by side, one batch "
                                    "per network call, same result as one at a time; 0 = 1 "
                                    "on a CPU, 8 on a GPU"),
    subvolume: str = typer.Option(None, help="z,y,x: segment in subvolumes of this core "
                                  "size (less memory), ids reconciled across them"),
    overlap: str = typer.Option("32,32,32", help="z,y,x context around each subvolume"),
    consensus: bool = typer.Option(False, help="grow again from the seeds in reverse order "
                                   "and keep the split consensus (fewer merges, 2x time)"),
    consensus_min_size: int = typer.Option(1000, min=0, help="consensus pieces smaller "
                                           "(voxels) are dropped"),
    shift_mask: str = typer.Option(None, help="volume of inter-section shift magnitudes "
                                   "(pixels): no FOV centred near large ones"),
    shift_mask_threshold: float = typer.Option(4.0, help="shift (pixels) that blocks FOVs"),
    shift_mask_radius: str = typer.Option(None, help="z,y,x window around a FOV centre "
                                          "checked for shifts (default: the FOV's)"),
    shift_mask_scale: int = typer.Option(1, min=1, help="the shift mask's y, x are at "
                                         "1/scale of the image's"),
    precision: str = typer.Option("fp32", help="fp32 or bf16"),
    channels_last: bool = typer.Option(True, help="channels-last-3d activations (faster "
                                       "on CPUs)"),
    device: str = DEVICE,
    colors: str = typer.Option("ids", help="tiles: ids (R*65536+G*256+B) or palette"),
    paint: str = typer.Option("", help="also paint the objects into a new segmentation "
                              "layer of this VAST (vast://HOST:PORT)"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Segment neurons with a flood-filling network."""
    from membrane_py.ffn.canvas import FloodOptions
    from membrane_py.ffn.infer import FFNInferJob

    options = spec_or_exit(
        FloodOptions, init_activation=init_activation, pad_value=pad_value,
        move_threshold=move_threshold, segment_threshold=segment_threshold,
        min_segment_size=min_segment_size,
        min_boundary_dist=tuple(ints_option(min_boundary_dist, 3, "--min-boundary-dist")),
        disco_seed_threshold=0.0 if freeze else None)
    execute(spec_or_exit(
        FFNInferJob, image=image, checkpoint=checkpoint, output=str(output),
        image_layer=image_layer, box=box_option(box), mip=mip, seeds=points_option(seed),
        mask=mask, options=options, model=None if (depth, features, fov, deltas) == (
            12, 32, "33,33,33", "8,8,8") else _model(depth, features, fov, deltas),
        image_mean=image_mean, image_stddev=image_stddev, concurrency=concurrency,
        subvolume=tuple(ints_option(subvolume, 3, "--subvolume")) if subvolume else None,
        overlap=tuple(ints_option(overlap, 3, "--overlap")), consensus=consensus,
        consensus_min_size=consensus_min_size, shift_mask=shift_mask,
        shift_mask_threshold=shift_mask_threshold,
        shift_mask_radius=tuple(ints_option(shift_mask_radius, 3, "--shift-mask-radius"))
        if shift_mask_radius else None, shift_mask_scale=shift_mask_scale,
        precision=precision,
        channels_last=channels_last, device=device, colors=colors, paint=paint), save_job)


@ffn_app.command("import")
def import_tf(
    checkpoint: str = typer.Argument(..., help="TensorFlow checkpoint prefix or .index"),
    output: Path = typer.Option(..., "--output", "-o", help="FFN checkpoint to write (.pt)"),
    depth: int = DEPTH,
    features: int = FEATURES,
    fov: str = FOV,
    deltas: str = DELTAS,
    image_mean: float = typer.Option(128.0, help="the mean it was trained with"),
    image_stddev: float = typer.Option(33.0, help="the stddev it was trained with"),
) -> None:
    """Convert a google/ffn TensorFlow checkpoint into an FFN checkpoint (no TensorFlow)."""
    from membrane_py.ffn.checkpoint import import_tf_checkpoint, save_ffn

    try:
        ckpt = import_tf_checkpoint(checkpoint, _model(depth, features, fov, deltas),
                                    image_mean=image_mean, image_stddev=image_stddev)
    except (ValueError, OSError) as e:
        raise fail(one_line(e)) from None
    save_ffn(output, ckpt)
    typer.echo(f"imported {len(ckpt.state_dict)} tensors (step {ckpt.step}) -> {output}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.add_typer(ffn_app, name="ffn")
