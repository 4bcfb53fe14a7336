"""Train tab: a new or pretrained U-Net on patch folders, transfer mode and ratios, every
training option (the rarely changed ones in an advanced fold), a time budget, and live loss
and validation curves plus a per-epoch metric table fed by the job's metric events."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLineEdit, QTableWidget, QTableWidgetItem

from membrane_py.events import Event
from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.widgets import (
    CurvePlot,
    Form,
    PathEdit,
    auto_spin,
    check,
    combo,
    dspin,
    need_dir,
    need_file,
    need_out,
    spin,
)

#: Columns of the metric table, in order, when the epoch events carry them.
TABLE_KEYS = ("epoch", "train_loss", "val_loss", "val_pixel_error", "val_miou", "val_v_rand",
              "val_v_info", "val_section_v_rand", "val_section_threshold",
              "val_section_adapt_bn", "lr", "seconds")


#: Fields a pretrained network decides (see :func:`~membrane_py.transfer.finetune.
#: inherited_settings`); hidden while one is chosen.
INHERITED = ("depth", "base_filters", "norm", "dropout")


def parse_floats_or_none(text: str, what: str) -> list[float] | None:
    from membrane_py.geometry import parse_floats

    text = text.strip()
    return None if not text else list(parse_floats(text, what))


class TrainTab(JobTab):
    title = "Train"
    group = "train"
    run_text = "Train network"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        from membrane_py.augment.transforms import AUGMENTATIONS
        from membrane_py.models.unet import NORMS
        from membrane_py.train.config import BEST_METRIC_CHOICES, OPTIMIZERS, TrainJob
        from membrane_py.train.losses import LOSSES
        from membrane_py.train.transfer_modes import TRANSFER_MODES

        f = self.add_form(Form(), "Data and network")
        f.add("image_dir", PathEdit("dir"), "Image patches", "folder of EM patches")
        f.add("label_dir", PathEdit("dir"), "Label patches", "folder of label patches")
        f.add("label_format", combo([("detect from the values", "auto"),
                                     ("class values (0 unknown, 1..K)", "classes"),
                                     ("mEMbrain codes", "codes"), ("ISBI (0/255)", "isbi")]),
              "Label format")
        f.add("n_classes", spin(0, 0, 255), "Classes", "0 = from the patches' manifest or labels")
        f.add("out_dir", PathEdit("out"), "Save network to", "folder for checkpoints and logs")
        f.add("name", QLineEdit("unet"), "Network name", "file name of the checkpoint (.pt)")
        f.add("save_onnx", check(False), "Also save as ONNX",
              "export the best checkpoint to <name>.onnx when training ends")
        f.add("network", combo([("untrained U-Net", "new"),
                                ("continue from a pretrained network", "pretrained")]),
              "Start from")
        f.add("pretrained", PathEdit("file", "Checkpoints (*.pt)"), "Pretrained network")
        f.add("transfer_mode", combo(list(TRANSFER_MODES)), "Transfer mode",
              "which weights train: all (continuous), only the last layer, all but the encoder, "
              "or the encoder at a reduced rate (leaky)")
        f.add("leaky_ratio", dspin(0.1, 0.001, 1.0, 0.05), "Leaky ratio",
              "learning-rate factor of the encoder in leaky mode")
        f.add("episodic_images", PathEdit("dir", placeholder="optional"), "Earlier images",
              "an earlier data set replayed in every batch (episodic memory)")
        f.add("episodic_labels", PathEdit("dir", placeholder="optional"), "Earlier labels")
        f.add("episodic_ratio", dspin(0.25, 0.01, 0.99, 0.05), "Replay share")
        g = self.add_form(Form(), "Training")
        g.add("epochs", spin(10, 1, 100000), "Epochs")
        g.add("patch_size", spin(256, 16, 4096, 16, " px"), "Patch size")
        g.add("batch_size", spin(8, 1, 4096), "Batch size")
        g.add("lr", dspin(1e-3, 1e-7, 1.0, 1e-4, 6), "Initial learning rate")
        g.add("optimizer", combo(list(OPTIMIZERS)), "Optimizer")
        g.add("schedule", combo([("constant", "none"), ("drop by a factor (piecewise)", "step"),
                                 ("cosine", "cosine")]), "Learning-rate schedule")
        g.add("step_factor", dspin(0.1, 0.001, 1.0, 0.05), "Drop factor")
        g.add("step_epochs", spin(2, 1, 10000), "Drop every (epochs)")
        g.add("val_fraction", dspin(0.3, 0.0, 0.95, 0.05, 2), "Validation share",
              "share of the images held out for validation (0.3 = 70 % training), unless "
              "validation images are given")
        g.add("val_image_dir", PathEdit("dir", placeholder="optional"), "Validation images",
              "images of their own to validate on (e.g. one whole labelled section); every "
              "training image then trains")
        g.add("val_label_dir", PathEdit("dir", placeholder="optional"), "Validation labels")
        g.add("minutes", dspin(0.0, 0.0, 100000.0, 5.0, 1), "Time budget (min)",
              "stop cleanly when the budget is used up, saving the network; 0 = no limit")
        a = Form()
        a.add("depth", auto_spin(spin(0, 0, 8)), "U-Net depth",
              "auto: 5 on a GPU, 4 on the CPU (a network the CPU trains in minutes)")
        a.add("base_filters", auto_spin(spin(0, 0, 512)), "Base filters",
              "auto: 32 on a GPU, 16 on the CPU")
        a.add("norm", combo(list(NORMS)), "Normalisation")
        a.add("dropout", dspin(0.0, 0.0, 0.9, 0.05), "Dropout")
        a.add("loss", combo(list(LOSSES), TrainJob.loss), "Loss")
        a.add("class_weights", QLineEdit(), "Class weights", "comma-separated, one per class; "
              "empty = equal (weighted_ce computes them from the data)")
        a.add("momentum", dspin(0.9, 0.0, 0.999, 0.05), "Momentum (SGD)")
        a.add("weight_decay", dspin(0.0, 0.0, 1.0, 1e-4, 6), "Weight decay")
        a.add("patches_per_epoch", spin(1024, 1, 10**7), "Patches per epoch")
        a.add("val_patches", spin(128, 0, 10**6), "Validation patches")
        a.add("augment", check(True), "Flips and rotations")
        for name in AUGMENTATIONS:
            a.add(f"aug_{name}", check(True), name.replace("_", " ").capitalize(),
                  "augmentation applied on the fly to training patches (all on by default: "
                  "networks trained on a few sections generalise better)")
        a.add("shuffle", check(True), "Shuffle every epoch")
        a.add("best_metric", combo(list(BEST_METRIC_CHOICES)), "Keep best by")
        a.add("log_every", spin(10, 1, 100000), "Plot loss every (iterations)")
        a.add("seed", spin(0, 0, 2**31 - 1), "Random seed")
        a.add("device", combo(["auto", "cpu", "cuda"]), "Device")
        toggle = [("auto (by device)", "auto"), ("on", True), ("off", False)]
        a.add("amp", combo(toggle), "bf16 autocast", "auto: on CUDA and on CPUs with "
              "AVX-512 BF16 or AMX")
        a.add("channels_last", combo(toggle), "Channels-last memory")
        a.add("num_workers", spin(0, 0, 64), "Data-loading processes")
        a.add("prefetch", check(False), "Prefetch thread", "load the next batches in a "
              "background thread")
        a.add("resume", PathEdit("file", "Checkpoints (*.pt)", "optional"), "Resume from",
              "a _last.pt checkpoint of an interrupted run")
        self.add_fold(a, "Advanced")
        self.f, self.g, self.a = f, g, a
        for name in ("network", "transfer_mode", "schedule"):
            (f.fields.get(name) or g.fields[name]).currentIndexChanged.connect(self._show_rows)

        self.plot = CurvePlot("Loss", "iteration")
        self.iter_curve = self.plot.add_curve("iter", "training (iterations)", "#90a4ae", 1)
        self.train_curve = self.plot.add_curve("train", "training (epochs)", "#1565c0",
                                               symbol="o")
        self.val_curve = self.plot.add_curve("val", "validation", "#c62828", symbol="s")
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("metrics")
        self.preview_layout.addWidget(self.plot, 3)
        self.preview_layout.addWidget(self.table, 2)
        self.points = self.plot.points
        self.epochs: list[dict] = []
        self.iterations = 0  # of the whole run, from the metric events
        self._parents: dict[tuple[str, int], dict] = {}
        self._show_rows()
        self.load_settings()

    def _show_rows(self) -> None:
        pretrained = self.f.value("network") == "pretrained"
        self.f.set_row_visible("pretrained", pretrained)
        self.f.set_row_visible("transfer_mode", pretrained)
        leaky = pretrained and self.f.value("transfer_mode") == "leaky"
        self.f.set_row_visible("leaky_ratio", leaky)
        for name in INHERITED:
            self.a.set_row_visible(name, not pretrained)
        step = self.g.value("schedule") == "step"
        self.g.set_row_visible("step_factor", step)
        self.g.set_row_visible("step_epochs", step)

    def problem(self) -> str | None:
        f, a = self.f, self.a
        msg = (need_dir(f.value("image_dir"), "image patch folder")
               or need_dir(f.value("label_dir"), "label patch folder")
               or need_out(f.value("out_dir"), "network folder"))
        if msg is None and not f.value("name"):
            msg = "give the network a name"
        if msg is None and f.value("network") == "pretrained":
            msg = need_file(f.value("pretrained"), "pretrained network", (".pt",))
        if msg is None and bool(f.value("episodic_images")) != bool(f.value("episodic_labels")):
            msg = "give both earlier folders (images and labels) for replay, or neither"
        if msg is None and f.value("episodic_images"):
            msg = (need_dir(f.value("episodic_images"), "earlier image folder")
                   or need_dir(f.value("episodic_labels"), "earlier label folder"))
        if msg is None and a.value("resume"):
            msg = need_file(a.value("resume"), "checkpoint to resume", (".pt",))
        return msg

    def build_spec(self):
        from membrane_py.train.config import TrainJob

        f, g, a = self.f, self.g, self.a
        pretrained = f.value("network") == "pretrained"
        episodic = ([{"images": f.value("episodic_images"), "labels": f.value("episodic_labels")}]
                    if f.value("episodic_images") else [])
        options = dict(
            image_dir=f.value("image_dir"), label_dir=f.value("label_dir"),
            out_dir=f.value("out_dir"), name=f.value("name"),
            label_format=f.value("label_format"), n_classes=f.value("n_classes") or None,
            transfer_mode=f.value("transfer_mode") if pretrained else "continuous",
            leaky_ratio=f.value("leaky_ratio"), episodic=episodic,
            episodic_ratio=f.value("episodic_ratio"),
            epochs=g.value("epochs"), patch_size=g.value("patch_size"),
            batch_size=g.value("batch_size"), lr=g.value("lr"), optimizer=g.value("optimizer"),
            schedule=g.value("schedule"), step_factor=g.value("step_factor"),
            step_epochs=g.value("step_epochs"), val_fraction=g.value("val_fraction"),
            val_image_dir=g.value("val_image_dir"), val_label_dir=g.value("val_label_dir"),
            minutes=g.value("minutes") or None, loss=a.value("loss"),
            class_weights=parse_floats_or_none(a.value("class_weights"), "class weights"),
            momentum=a.value("momentum"), weight_decay=a.value("weight_decay"),
            patches_per_epoch=a.value("patches_per_epoch"), val_patches=a.value("val_patches"),
            augment=self._augment(), shuffle=a.value("shuffle"),
            best_metric=a.value("best_metric"), log_every=a.value("log_every"),
            seed=a.value("seed"), device=a.value("device"), amp=a.value("amp"),
            channels_last=a.value("channels_last"), num_workers=a.value("num_workers"),
            prefetch=a.value("prefetch"),
            resume=a.value("resume") or None)
        if pretrained:  # architecture and preprocessing come from the pretrained network
            path = f.value("pretrained")
            return TrainJob(**{**self._inherited(path), "pretrained": path, **options})
        net = {name: a.value(name) for name in INHERITED}
        net.update(depth=net["depth"] or None, base_filters=net["base_filters"] or None)  # auto
        return TrainJob(**options, **net)

    def _augment(self):
        """Flips and rotations plus the ticked augmentations; None when nothing is on."""
        from membrane_py.augment.transforms import AUGMENTATIONS, AugmentConfig

        names = [n for n in AUGMENTATIONS if self.a.value(f"aug_{n}")]
        flips = self.a.value("augment")
        return AugmentConfig.from_names(names, flips) if flips or names else None

    def _inherited(self, path: str) -> dict:
        """The pretrained network's inherited settings, read once per file version (the spec
        is rebuilt on every keystroke)."""
        from membrane_py.train.checkpoint import load_checkpoint
        from membrane_py.transfer.finetune import inherited_settings

        key = (path, Path(path).stat().st_mtime_ns)
        if key not in self._parents:  # CheckpointError (a ValueError) says what is wrong
            self._parents = {key: inherited_settings(load_checkpoint(path))}
        return self._parents[key]

    def job_started(self, spec) -> None:
        self.plot.clear_points()
        self.epochs.clear()
        self.table.setRowCount(0)

    def handle_event(self, event: Event) -> None:
        if event.kind != "metric":
            return
        d = event.data
        self.iterations = event.total
        if event.message == "iteration" and "loss" in d:
            self.plot.append("iter", event.done, d["loss"])
        elif event.message == "epoch":
            if "train_loss" in d:
                self.plot.append("train", event.done, d["train_loss"])
            if "val_loss" in d:
                self.plot.append("val", event.done, d["val_loss"])
            self.epochs.append(d)
            self._add_row(d)

    def interrupted(self, resumed) -> None:
        """Point "Resume from" at what the interrupted run left, and say so."""
        if resumed.kind == "train" and resumed.resume and not self.a.value("resume"):
            self.a["resume"].setText(resumed.resume)
            self.panel.set_status(f"{self.panel.status.text()}; Run continues from "
                                  f"{Path(resumed.resume).name} (clear 'Resume from' under "
                                  "Advanced to start over)", ok=False)

    def handle_finished(self, info) -> None:
        """After a finished training: "Resume from" is used up; export to ONNX when asked
        (a second job)."""
        if info.state == "done" and info.kind == "train":
            self.a["resume"].setText("")
        best = (info.result or {}).get("best_path")
        if info.state != "done" or info.kind != "train" or not best \
                or not self.f.value("save_onnx"):
            return
        from membrane_py.transfer.onnx import ExportOnnxJob

        job_id = self.controller.submit(ExportOnnxJob(checkpoint=best,
                                                      out=str(Path(best).with_suffix(".onnx"))))
        if job_id is not None:
            self.panel.start(job_id)
            self.panel.set_status(f"exporting {Path(best).with_suffix('.onnx').name}")

    def _add_row(self, record: dict) -> None:
        keys = [k for k in TABLE_KEYS if any(k in r for r in self.epochs)]
        self.table.setColumnCount(len(keys))
        self.table.setHorizontalHeaderLabels(keys)
        self.table.setRowCount(len(self.epochs))
        for row, rec in enumerate(self.epochs):
            for col, key in enumerate(keys):
                value = rec.get(key, "")
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
