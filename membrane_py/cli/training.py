"""Training and evaluation commands (`membrane train`, `membrane evaluate`)."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.options import (
    ADAPT_BN,
    LABEL_FORMAT,
    MAX_CLASSES,
    SAVE_JOB,
    TRAIN_AUGMENTATIONS,
    augment_option,
    floats_option,
    ints_option,
    spec_or_exit,
)
from membrane_py.cli.render import execute, fail, one_line


def train(
    images: Path = typer.Option(..., help="folder of 8-bit EM images (whole sections or patches)"),
    labels: Path = typer.Option(..., help="folder of label images, matched to images by name"),
    out: Path = typer.Option(Path("runs"), help="folder for checkpoints and logs"),
    name: str = typer.Option("unet", help="run name: <out>/<name>.pt (best), <name>_last.pt"),
    label_format: str = LABEL_FORMAT,
    max_classes: int = MAX_CLASSES,
    n_classes: int = typer.Option(None, help="number of classes (default: from the labels)"),
    class_names: str = typer.Option(None, help="comma-separated class names, class 1 first"),
    patch_size: int = typer.Option(256, help="training patch side (multiple of 2**depth)"),
    patches_per_epoch: int = typer.Option(1024, help="patches drawn per epoch from whole images"),
    val_patches: int = typer.Option(128, help="validation patches drawn from validation images"),
    val_fraction: float = typer.Option(0.3, help="fraction of images held out for validation "
                                       "(unless --val-images is given)"),
    val_images: Path = typer.Option(None, help="validation images of their own (e.g. one whole "
                                    "labelled section); every --images image then trains"),
    val_labels: Path = typer.Option(None, help="labels of --val-images, matched by name"),
    val_sections: int = typer.Option(8, help="whole validation images predicted and scored "
                                     "(V_rand over membrane thresholds) every epoch, at most; "
                                     "0 = patches only"),
    augment: bool = typer.Option(True, help="flip / rot90 augmentation of training patches"),
    augmentations: str = TRAIN_AUGMENTATIONS,
    target: str = typer.Option("classes", help="classes (membranes, organelles) or affinities "
                               "(neighbour affinities for 3D neurons; --images and --labels are "
                               "then volumes, e.g. em.tif and bodies.h5:stack)"),
    context: int = typer.Option(0, help="affinities: neighbouring sections on each side fed "
                                "as extra input channels (2.5D), so z affinities are learned"),
    offset: list[str] = typer.Option(None, "--offset", help="affinities: one offset x,y,z per "
                                     "output channel (repeat; default 1,0,0 0,1,0 0,0,1 and "
                                     "e.g. 0,9,0 adds a long-range one)"),
    arch: str = typer.Option(None, help="architecture: unet (plain U-Net), resunet "
                             "(residual U-Net) or unet3d (3D U-Net, affinities with context 0, "
                             "cubes of --patch-size) (default unet, or the pretrained "
                             "network's)"),
    depth: int = typer.Option(None, help="U-Net depth (number of poolings) (default 5 on CUDA, "
                              "4 on CPU, or the pretrained / resumed network's)"),
    base_filters: int = typer.Option(None, help="filters of the first stage, doubling per stage "
                                     "(default 32 on CUDA, 16 on CPU, or the pretrained / "
                                     "resumed network's)"),
    norm: str = typer.Option(None, help="batch, group or none (default batch, or the "
                             "pretrained network's)"),
    dropout: float = typer.Option(None, help="dropout at the deepest stage and bridge "
                                  "(default 0, or the pretrained network's)"),
    epochs: int = typer.Option(10),
    minutes: float = typer.Option(None, help="time budget: stop after this many minutes of "
                                  "training (the epoch in progress ends early), save, report"),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(1e-3, help="initial learning rate"),
    optimizer: str = typer.Option("adam", help="adam, adamw, sgd (with momentum) or rmsprop"),
    momentum: float = typer.Option(0.9, help="momentum for sgd / rmsprop"),
    weight_decay: float = typer.Option(0.0),
    schedule: str = typer.Option("none", help="none, step (drop every N epochs) or cosine"),
    step_epochs: int = typer.Option(2, help="step schedule: epochs between drops"),
    step_factor: float = typer.Option(0.1, help="step schedule: factor per drop"),
    loss: str = typer.Option("weighted_ce", help="weighted_ce (classes weighted by inverse "
                             "frequency, so thin membranes count), ce, dice, ce_dice, squared or "
                             "logistic"),
    class_weights: str = typer.Option(None, help="comma-separated weights for weighted_ce "
                                      "(default: inverse class frequency)"),
    shuffle: bool = typer.Option(True),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps"),
    amp: bool = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default auto: on "
                             "CUDA and on CPUs with AVX-512 BF16 or AMX)"),
    channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last",
                                       help="channels-last memory format (default auto: on "
                                       "CUDA and the CPU)"),
    workers: int = typer.Option(0, help="data-loading worker processes"),
    prefetch: bool = typer.Option(False, "--prefetch/--no-prefetch", help="load and augment "
                                  "the next batches in a background thread"),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the "
                                 "network (compiling takes minutes on a small CPU)"),
    threads: int = typer.Option(None, help="PyTorch threads for the run (default: one per "
                                "core)"),
    best_metric: str = typer.Option("auto", help="auto (whole-section V_rand, else val_loss), "
                                    "val_section_v_rand, val_loss, val_pixel_error, val_miou, "
                                    "val_v_rand or val_v_info (patch scores)"),
    clahe: bool = typer.Option(None, "--clahe/--no-clahe", help="CLAHE before normalisation, "
                               "repeated at prediction (default off, or as the pretrained "
                               "network)"),
    resume: Path = typer.Option(None, help="continue an interrupted run from its _last.pt"),
    pretrained: str = typer.Option("auto", help="start from this checkpoint (transfer "
                                   "learning; a different class count gets a new output layer), "
                                   "'starter' (the shipped membrane model), 'auto' (the starter "
                                   "when the network fits it, else from scratch) or 'none' "
                                   "(from scratch)"),
    transfer_mode: str = typer.Option("continuous", help="with --pretrained: continuous (all "
                                      "weights), last_layer, freeze_encoder or leaky"),
    leaky_ratio: float = typer.Option(0.1, help="leaky mode: encoder lr = ratio x lr"),
    frozen_bn: str = typer.Option("pretrained", help="last_layer / freeze_encoder: the frozen "
                                  "parts' batch norm keeps the pretrained statistics "
                                  "(pretrained) or adapts them to the new data (adapt)"),
    episodic: list[str] = typer.Option(None, help="earlier data set replayed in every batch, "
                                       "IMAGES:LABELS[:FORMAT] (repeatable)"),
    episodic_ratio: float = typer.Option(0.25, help="share of each batch from --episodic data"),
    mip: int = typer.Option(0, help="mip level the images were taken at (recorded)"),
    voxel_size: tuple[float, float, float] = typer.Option(
        None, help="voxel size of the images in nm as X Y Z, VAST's order (recorded in the "
        "checkpoint; asked for when not given)"),
    save_job: Path = SAVE_JOB,
) -> None:
    """Train a 2D U-Net; writes the best and last checkpoints, a .log and a metrics .jsonl."""
    from membrane_py.augment.preprocess import PreprocessConfig
    from membrane_py.train.config import TrainJob
    from membrane_py.transfer.finetune import finetune_config, parse_episodic

    # unset architecture / preprocessing options come from the pretrained network, if any
    inheritable = {"arch": arch, "depth": depth, "base_filters": base_filters, "norm": norm,
                   "dropout": dropout,
                   "preprocess": None if clahe is None else PreprocessConfig(clahe=clahe).to_dict()}
    try:
        options = dict(
            {k: v for k, v in inheritable.items() if v is not None},
            image_dir=str(images), label_dir=str(labels), out_dir=str(out), name=name,
            target=target, context=context,
            **({"offsets": [ints_option(o, 3, "--offset")[::-1] for o in offset]}
               if offset else {}),
            label_format=label_format, max_classes=max_classes, n_classes=n_classes,
            class_names=class_names.split(",") if class_names else None, patch_size=patch_size,
            patches_per_epoch=patches_per_epoch, val_patches=val_patches, val_fraction=val_fraction,
            val_image_dir=str(val_images or ""), val_label_dir=str(val_labels or ""),
            val_sections=val_sections,
            augment=augment_option(augment, augmentations), epochs=epochs, minutes=minutes,
            batch_size=batch_size, lr=lr, optimizer=optimizer,
            momentum=momentum, weight_decay=weight_decay, schedule=schedule,
            step_epochs=step_epochs,
            step_factor=step_factor, loss=loss,
            class_weights=floats_option(class_weights, "--class-weights"),
            shuffle=shuffle, seed=seed, device=device, num_workers=workers,
            **{k: "auto" if v is None else v for k, v in (
                ("amp", amp), ("channels_last", channels_last))},
            prefetch=prefetch, compile=compile, threads=threads,
            best_metric=best_metric, resume=str(resume) if resume else None, mip=mip,
            voxel_size=list(voxel_size[::-1]) if voxel_size else None,
            transfer_mode=transfer_mode, leaky_ratio=leaky_ratio, frozen_bn=frozen_bn,
            episodic=[parse_episodic(e) for e in episodic or []], episodic_ratio=episodic_ratio)
        if pretrained.lower() in ("auto", "none"):
            cfg = TrainJob(**options, pretrained=None if pretrained.lower() == "none" else "auto")
        else:
            cfg = finetune_config(pretrained, **options)
    except (ValueError, OSError) as e:
        raise fail(one_line(e)) from None
    execute(cfg, save_job)


def evaluate(
    checkpoint: Path = typer.Argument(..., help="a trained checkpoint (.pt), an .onnx model or "
                                      "'starter' (the shipped membrane model)"),
    images: list[Path] = typer.Argument(..., help="EM image files (or folders of them) to predict"),
    labels: list[Path] = typer.Option(None, "--label", help="label file per image (repeat)"),
    label_dir: Path = typer.Option(None, help="folder of labels matched to images by name"),
    label_format: str = LABEL_FORMAT,
    out: Path = typer.Option(Path("evaluation"), help="folder for PNGs and metrics"),
    device: str = typer.Option("auto"),
    threshold: float = typer.Option(None, help="membrane probability threshold for instances "
                                    "(default: the model's own, chosen in training, else 0.5)"),
    method: str = typer.Option("watershed", help="instances: watershed or components"),
    tta: int = typer.Option(1, help="test-time augmentation: flips/rotations averaged (1..8)"),
    precision: str = typer.Option("auto", help="fp32, bf16, int8 (calibrated on the first "
                                  "image) or auto, as predict"),
    adapt_bn: bool | None = ADAPT_BN,
    save_job: Path = SAVE_JOB,
) -> None:
    """Predict sample images, write prediction / probability / overlay PNGs and, with labels,
    print and save the metric table."""
    from rich.console import Console
    from rich.table import Table

    from membrane_py.predict.evaluate import EvaluateJob

    result = execute(spec_or_exit(
        EvaluateJob, checkpoint=str(checkpoint), images=[str(p) for p in images], out=str(out),
        labels=[str(p) for p in labels] if labels else None,
        label_dir=str(label_dir) if label_dir else None, label_format=label_format,
        device=device, threshold=threshold, method=method, tta=tta, precision=precision,
        adapt_bn=adapt_bn),
        save_job)
    rows = result.rows
    if rows:
        keys = [k for k in ("pixel_error", "v_rand", "v_info", "adapted_rand_error", "vi_split",
                            "vi_merge") if k in rows[0]]
        keys += [k for k in rows[0] if k.startswith("iou_")]
        table = Table(*(["image"] + keys))
        for r in rows:
            table.add_row(r["image"], *(f"{r[k]:.4f}" for k in keys))
        Console().print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `membrane` app."""
    app.command()(train)
    app.command()(evaluate)
