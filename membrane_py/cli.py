"""The `membrane` command: one sub-command per workflow step, built on the same job specs
and functions as the GUI and the Python API. Heavy imports happen inside each command so
`membrane --help` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="membrane-py: membrane, organelle and neuron segmentation of EM volumes with VAST.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the membrane-py version."""
    from membrane_py import __version__

    typer.echo(__version__)


class _Bar:
    """Renders Progress events as rich progress bars, one per task name."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._rich = Progress("[progress.description]{task.description}", BarColumn(),
                              MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
        self._tasks: dict[str, int] = {}
        self._rich.__enter__()
        return self

    def __call__(self, event) -> None:
        if event.task not in self._tasks:
            self._tasks[event.task] = self._rich.add_task(event.task, total=event.total)
        self._rich.update(self._tasks[event.task], completed=event.done, total=event.total)

    def __exit__(self, *exc) -> None:
        self._rich.__exit__(*exc)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), help="folder for everything the demo writes"),
) -> None:
    """Run the main job on the bundled synthetic volume and print where the results are."""
    from membrane_py.demo import DemoConfig, run_demo

    with _Bar() as bar:
        result = run_demo(DemoConfig(out=out), progress=bar)
    typer.echo(f"EM tiles ({result.n_tiles} PNGs):  {result.tiles_dir}")
    typer.echo(f"VAST descriptor:         {result.descriptor}")
    typer.echo(f"read through the VAST protocol: {result.megabytes:.0f} MB "
               f"at {result.read_mb_s:.0f} MB/s")
    status = "byte-identical" if result.identical else "DIFFERENT (bug!)"
    typer.echo(f"server loaded the descriptor as layer {result.layer_nr}; read back: {status}")
    if not result.identical:
        raise typer.Exit(1)


@app.command()
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
) -> None:
    """Serve a volume over the VAST remote-control protocol (for users without VAST)."""
    from mock_vast_server.server import main as server_main

    argv = ["--volume", volume, "--host", host, "--port", str(port)]
    for flag, value in (("--labels", labels), ("--skeletons", skeletons), ("--state", state)):
        if value is not None:
            argv += [flag, str(value)]
    if voxel_size is not None:
        argv += ["--voxel-size", *map(str, voxel_size)]
    server_main(argv)


# --- ground truth and patches (membrane_py.augment) ---
gt_app = typer.Typer(help="Ground-truth conversions over folders of label images or stacks.",
                     no_args_is_help=True)
app.add_typer(gt_app, name="gt")


def _progress_printer():
    from membrane_py.progress import Progress

    def show(event: Progress) -> None:
        typer.echo(f"{event.task}: {event.done}/{event.total} {event.message}", err=True)

    return show


@gt_app.command("membrane")
def gt_membrane(
    input: str = typer.Argument(..., help="folder of instance label images, .tif or .h5[:dataset]"),
    output: Path = typer.Argument(..., help="output folder for <name>_border.png"),
    thickness: int = typer.Option(3, min=1, help="membrane band width in pixels"),
    fill_ecs: bool = typer.Option(False, help="label-0 pixels (extracellular space) -> membrane"),
    unknown_id: int = typer.Option(None, help="input id that means unknown; stays 0 in output"),
) -> None:
    """Neuron instance labels -> membrane labels (1 non-membrane, 2 membrane, 0 unknown)."""
    from membrane_py.augment.patches import GtJob, run_gt_job

    job = GtJob("membrane", input, str(output), thickness=thickness, fill_ecs=fill_ecs,
                unknown_id=unknown_id)
    written = run_gt_job(job, _progress_printer())
    typer.echo(f"wrote {len(written)} membrane label images to {output}")


@gt_app.command("skeleton")
def gt_skeleton(
    input: str = typer.Argument(..., help="folder of membrane label images, .tif or .h5[:dataset]"),
    output: Path = typer.Argument(..., help="output folder for <name>_skel.png"),
    unknown: bool = typer.Option(True, help="the input uses 0 for unknown pixels"),
    filter_size: int = typer.Option(3, help="Gaussian smoothing size: 1 (none), 3 or 5"),
) -> None:
    """Membrane labels -> skeleton labels (1 background, 2 near the skeleton, 0 unknown)."""
    from membrane_py.augment.patches import GtJob, run_gt_job

    job = GtJob("skeleton", input, str(output), has_unknown=unknown, filter_size=filter_size)
    written = run_gt_job(job, _progress_printer())
    typer.echo(f"wrote {len(written)} skeleton label images to {output}")


@app.command()
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
    label_map: str = typer.Option(None, help="raw value -> class, e.g. ISBI '0:2,255:1'"),
    n_classes: int = typer.Option(None, help="number of classes K (default: largest present)"),
    augment: bool = typer.Option(False, help="apply all augmentations while writing"),
    seed: int = typer.Option(0, help="random seed (same seed, same patches)"),
    overwrite: bool = typer.Option(False, help="replace patches already in the output folders"),
) -> None:
    """Cut saturated training patches (mEMbrain layout plus manifest.json)."""
    from membrane_py.augment.patches import PatchJob, generate_patches, parse_label_map
    from membrane_py.augment.transforms import AugmentConfig

    job = PatchJob(str(images), str(labels), str(out_images), str(out_labels),
                   patch_size=patch_size, density=density, rotate=rotate, downsample=downsample,
                   contrast=contrast, label_map=parse_label_map(label_map), n_classes=n_classes,
                   augment=AugmentConfig.all_on() if augment else None, seed=seed,
                   overwrite=overwrite)
    try:
        manifest = generate_patches(job, _progress_printer())
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"wrote {len(manifest['patches'])} patch pairs ({manifest['n_classes']} classes) "
               f"to {out_images} and {out_labels}")


@app.command()
def train(
    images: Path = typer.Option(..., help="folder of 8-bit EM images (whole sections or patches)"),
    labels: Path = typer.Option(..., help="folder of label images, matched to images by name"),
    out: Path = typer.Option(Path("runs"), help="folder for checkpoints and logs"),
    name: str = typer.Option("unet", help="run name: <out>/<name>.pt (best), <name>_last.pt"),
    label_format: str = typer.Option("codes", help="codes (mEMbrain PNG class codes), isbi "
                                     "(0 = membrane, 255 = interior) or classes (0 unknown, 1..K)"),
    n_classes: int = typer.Option(None, help="number of classes (default: from the labels)"),
    class_names: str = typer.Option(None, help="comma-separated class names, class 1 first"),
    patch_size: int = typer.Option(256, help="training patch side (multiple of 2**depth)"),
    patches_per_epoch: int = typer.Option(1024, help="patches drawn per epoch from whole images"),
    val_patches: int = typer.Option(128, help="validation patches drawn from validation images"),
    val_fraction: float = typer.Option(0.3, help="fraction of images held out for validation"),
    augment: bool = typer.Option(True, help="flip / rot90 augmentation of training patches"),
    depth: int = typer.Option(5, help="U-Net depth (number of poolings)"),
    base_filters: int = typer.Option(32, help="filters of the first stage (doubling per stage)"),
    norm: str = typer.Option("batch", help="batch, group or none"),
    dropout: float = typer.Option(0.0, help="dropout at the deepest stage and bridge"),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(1e-3, help="initial learning rate"),
    optimizer: str = typer.Option("adam", help="adam, adamw, sgd (with momentum) or rmsprop"),
    momentum: float = typer.Option(0.9, help="momentum for sgd / rmsprop"),
    weight_decay: float = typer.Option(0.0),
    schedule: str = typer.Option("none", help="none, step (drop every N epochs) or cosine"),
    step_epochs: int = typer.Option(2, help="step schedule: epochs between drops"),
    step_factor: float = typer.Option(0.1, help="step schedule: factor per drop"),
    loss: str = typer.Option("ce", help="ce, weighted_ce, dice, ce_dice, squared or logistic"),
    class_weights: str = typer.Option(None, help="comma-separated weights for weighted_ce "
                                      "(default: inverse class frequency)"),
    shuffle: bool = typer.Option(True),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:1, mps"),
    amp: bool = typer.Option(True, help="bf16 autocast on CUDA"),
    workers: int = typer.Option(0, help="data-loading worker processes"),
    best_metric: str = typer.Option("val_loss", help="val_loss, val_pixel_error, val_miou, "
                                    "val_v_rand or val_v_info"),
    clahe: bool = typer.Option(False, help="CLAHE before normalisation (repeated at prediction)"),
    resume: Path = typer.Option(None, help="continue an interrupted run from its _last.pt"),
    pretrained: Path = typer.Option(None, help="start from this checkpoint's weights"),
    mip: int = typer.Option(0, help="mip level the images were taken at (recorded)"),
    config_out: Path = typer.Option(None, help="also write the job spec as JSON here"),
) -> None:
    """Train a 2D U-Net; writes the best and last checkpoints, a .log and a metrics .jsonl."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from membrane_py.augment.preprocess import PreprocessConfig
    from membrane_py.train.config import TrainConfig
    from membrane_py.train.trainer import run_training

    cfg = TrainConfig(
        image_dir=str(images), label_dir=str(labels), out_dir=str(out), name=name,
        label_format=label_format, n_classes=n_classes,
        class_names=class_names.split(",") if class_names else None, patch_size=patch_size,
        patches_per_epoch=patches_per_epoch, val_patches=val_patches, val_fraction=val_fraction,
        augment=augment, depth=depth, base_filters=base_filters, norm=norm, dropout=dropout,
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, step_epochs=step_epochs,
        step_factor=step_factor, loss=loss,
        class_weights=[float(w) for w in class_weights.split(",")] if class_weights else None,
        shuffle=shuffle, seed=seed, device=device, amp=amp, num_workers=workers,
        best_metric=best_metric, resume=str(resume) if resume else None,
        pretrained=str(pretrained) if pretrained else None,
        preprocess=PreprocessConfig(clahe=clahe).to_dict(), mip=mip)
    if config_out is not None:
        config_out.write_text(cfg.to_json())
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=None, info="")

        def show(event) -> None:
            m = event.metrics
            if event.message == "epoch":
                parts = [f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float)]
                bar.console.print(f"epoch {m['epoch']}: " + " ".join(parts))
            bar.update(task, completed=event.done, total=event.total,
                       info=f"epoch {m.get('epoch')} loss {m.get('loss', m.get('train_loss')):.4f}")

        result = run_training(cfg, progress=show)
    typer.echo(f"best checkpoint: {result.best_path} (device {result.device}, "
               f"{result.seconds:.0f} s)")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="a trained checkpoint (.pt)"),
    images: list[Path] = typer.Argument(..., help="EM image files to predict"),
    labels: list[Path] = typer.Option(None, "--label", help="label file per image (repeat)"),
    label_dir: Path = typer.Option(None, help="folder of labels matched to images by name"),
    label_format: str = typer.Option("codes", help="codes, isbi or classes (see train)"),
    out: Path = typer.Option(Path("evaluation"), help="folder for PNGs and metrics"),
    device: str = typer.Option("auto"),
    threshold: float = typer.Option(0.5, help="membrane probability threshold for instances"),
    method: str = typer.Option("watershed", help="instances: watershed or components"),
) -> None:
    """Predict sample images, write prediction / probability / overlay PNGs and, with labels,
    print and save the metric table."""
    from rich.console import Console
    from rich.table import Table

    from membrane_py.train.evaluate import evaluate_images

    if label_dir is not None:
        from membrane_py.augment import labels as L
        from membrane_py.augment.patches import pair_by_name

        by_image = dict(pair_by_name(list(images), L.list_images(label_dir)))
        labels = [by_image[p] for p in images]
    rows = evaluate_images(checkpoint, list(images), out, labels=labels or None,
                           label_format=label_format, device=device, threshold=threshold,
                           method=method)
    typer.echo(f"pictures written to {out}")
    if rows:
        keys = [k for k in ("pixel_error", "v_rand", "v_info", "adapted_rand_error", "vi_split",
                            "vi_merge") if k in rows[0]]
        keys += [k for k in rows[0] if k.startswith("iou_")]
        table = Table(*(["image"] + keys))
        for r in rows:
            table.add_row(r["image"], *(f"{r[k]:.4f}" for k in keys))
        Console().print(table)
        typer.echo(f"metrics saved to {out / 'metrics.json'} and metrics.csv")


if __name__ == "__main__":
    app()
