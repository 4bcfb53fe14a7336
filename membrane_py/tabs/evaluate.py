"""Evaluate tab: a network on sample images; shows prediction, probability, overlay or the
error map against labels one image at a time (previous / next), the metric table, and saves
the picture shown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.widgets import (
    ERROR_STYLE,
    OK_STYLE,
    Form,
    ImageView,
    PathEdit,
    combo,
    dspin,
    listing,
    need_dir,
    need_file,
    need_out,
    read_preview,
)

VIEWS = [("prediction", "prediction"), ("probability", "probability"),
         ("prediction over the image", "overlay"), ("error map against labels", "errors"),
         ("input image", "input")]


class EvaluateTab(JobTab):
    title = "Evaluate"
    group = "evaluate"
    run_text = "Evaluate"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        f = self.add_form(Form())
        f.add("checkpoint", PathEdit("file", "Networks (*.pt *.onnx)"), "Network",
              "a trained checkpoint (.pt) or an exported ONNX model")
        f.add("images", PathEdit("dir"), "EM images", "folder of 8-bit EM images to evaluate")
        f.add("label_dir", PathEdit("dir", placeholder="optional"), "Labels",
              "label images with the same names, for metrics and the error map")
        f.add("label_format", combo([("mEMbrain codes", "codes"), ("ISBI (0/255)", "isbi"),
                                     ("class values", "classes")]), "Label format")
        f.add("out", PathEdit("out"), "Pictures to", "folder for pictures and metric tables")
        f.add("threshold", dspin(0.5, 0.0, 1.0, 0.05), "Membrane threshold")
        f.add("device", combo(["auto", "cpu", "cuda"]), "Device")
        self.f = f
        self.view = combo(VIEWS)
        self.view.setObjectName("view")
        self.prev_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.save_button = QPushButton("Save picture…")
        self.image = ImageView("pictures appear after Evaluate")
        self.caption = QLabel("")
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("metrics")
        bar = QHBoxLayout()
        for w in (self.view, self.prev_button, self.next_button, self.save_button):
            bar.addWidget(w)
        self.preview_layout.addLayout(bar)
        self.preview_layout.addWidget(self.image, 3)
        self.preview_layout.addWidget(self.caption)
        self.preview_layout.addWidget(self.table, 1)
        self.stems: list[str] = []
        self.inputs: dict[str, Path] = {}
        self.index = 0
        self.view.currentIndexChanged.connect(self.show_current)
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.save_button.clicked.connect(self._save_dialog)
        self._enable_nav()
        self.load_settings()

    def problem(self) -> str | None:
        f = self.f
        msg = (need_file(f.value("checkpoint"), "network", (".pt", ".onnx"))
               or need_dir(f.value("images"), "EM image folder")
               or (need_dir(f.value("label_dir"), "label folder") if f.value("label_dir")
                   else None)
               or need_out(f.value("out"), "picture folder"))
        if msg is None and not listing(f.value("images"), limit=1):
            msg = f"no images in {f.value('images')}: choose a folder of PNG or TIFF images"
        return msg

    def build_spec(self):
        from membrane_py.predict.evaluate import EvaluateJob

        f = self.f
        images = [str(p) for p in listing(f.value("images"))]
        return EvaluateJob(checkpoint=f.value("checkpoint"), images=images, out=f.value("out"),
                           label_dir=f.value("label_dir") or None,
                           label_format=f.value("label_format"), device=f.value("device"),
                           threshold=f.value("threshold"))

    def handle_finished(self, info) -> None:
        if info.state != "done":
            return
        self.inputs = {p.stem: p for p in listing(self.f.value("images"))}
        out = Path(self.f.value("out"))
        self.stems = [s for s in self.inputs if (out / f"{s}_prediction.png").is_file()]
        self.index = 0
        self.show_current()
        self._fill_table(out / "metrics.json")

    def _fill_table(self, path: Path) -> None:
        rows = json.loads(path.read_text()) if path.is_file() else []
        keys = list(rows[0]) if rows else []
        self.table.setColumnCount(len(keys))
        self.table.setHorizontalHeaderLabels(keys)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(keys):
                value = row.get(key, "")
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def current_path(self) -> Path | None:
        if not self.stems:
            return None
        stem, kind = self.stems[self.index], self.view.currentData()
        if kind == "input":
            return self.inputs.get(stem)
        return Path(self.f.value("out")) / f"{stem}_{kind}.png"

    def show_current(self) -> None:
        path = self.current_path()
        self._enable_nav()
        if path is None:
            return
        if not path.is_file():
            self.image.clear_image()
            self.image.setText("no error map: evaluate with labels to see one"
                               if self.view.currentData() == "errors" else f"{path.name} missing")
            self.caption.setText(str(path))
            return
        self.image.show_array(read_preview(path))
        self.caption.setText(f"{self.index + 1}/{len(self.stems)}  {path}")

    def step(self, delta: int) -> None:
        if self.stems:
            self.index = (self.index + delta) % len(self.stems)
            self.show_current()

    def _enable_nav(self) -> None:
        for b in (self.prev_button, self.next_button):
            b.setEnabled(len(self.stems) > 1)
        self.save_button.setEnabled(bool(self.stems))

    def save_current(self, target: str | Path) -> bool:
        """Copy the picture shown to ``target`` (a file, or a folder for ``<name>``)."""
        path = self.current_path()
        if path is None or not path.is_file():
            return False
        target = Path(target)
        if target.is_dir():
            target = target / path.name
        try:
            shutil.copyfile(path, target)
        except OSError as exc:
            self.caption.setStyleSheet(ERROR_STYLE)
            self.caption.setText(f"could not save {target}: {exc.strerror or exc}")
            return False
        self.caption.setStyleSheet(OK_STYLE)
        self.caption.setText(f"saved {target}")
        return True

    def _save_dialog(self) -> None:
        path = self.current_path()
        if path is None:
            return
        target, _ = QFileDialog.getSaveFileName(self, "Save picture", path.name, "PNG (*.png)")
        if target:
            self.save_current(target)
