"""Patches tab: paired EM and label folders -> saturated training patches, with the
augmentation settings in an advanced fold, the valid-centre mask of the first pair and a
grid of the patches written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QGridLayout, QLabel, QLineEdit, QPushButton

from membrane_py.tabs.groundtruth import parse_label_map
from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.widgets import (
    ERROR_STYLE,
    Form,
    ImageView,
    PathEdit,
    check,
    combo,
    dspin,
    listing,
    need_dir,
    need_out,
    read_preview,
    spin,
    stretch,
)

#: Patches shown in the preview grid (rows x columns).
GRID = (3, 4)
#: Largest first image (pixels) the valid-centre preview computes in the window (a second).
PREVIEW_MAX_PIXELS = 2048 * 2048


def mask_overlay(label: np.ndarray, valid: np.ndarray,
                 centres: list[tuple[int, int]] = ()) -> np.ndarray:
    """Labels in gray, valid centres tinted green, sampled centres as red squares."""
    gray = stretch(label)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[valid] = (0.5 * rgb[valid] + [0, 127, 0]).astype(np.uint8)
    r = max(1, max(label.shape) // 200)
    for cy, cx in centres:
        rgb[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1] = (230, 30, 30)
    return rgb


class PatchesTab(JobTab):
    title = "Patches"
    group = "patches"
    run_text = "Generate patches"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        f = self.add_form(Form(), "Folders")
        f.add("images", PathEdit("dir"), "EM images", "folder of 8-bit EM images")
        f.add("labels", PathEdit("dir"), "Labels", "folder of label images, paired by file name")
        f.add("out_images", PathEdit("out"), "Image patches to", "folder for the EM patches")
        f.add("out_labels", PathEdit("out"), "Label patches to", "folder for the label patches")
        g = self.add_form(Form(), "Sampling")
        g.add("patch_size", spin(256, 16, 4096, 16, " px"), "Patch size", "side of the square")
        g.add("density", dspin(100.0, 0.1, 100000.0, 10.0, 1), "Patches per 1024² px",
              "patches per 1024 x 1024 annotated pixels (100 to 1000 is typical)")
        g.add("rotate", check(True), "Rotate by any angle")
        g.add("angle_step", dspin(5.0, 0.5, 90.0, 1.0, 1), "Angle step (°)")
        g.add("downsample", spin(1, 1, 16), "Downsampling factor")
        g.add("contrast", combo([("none", "none"), ("CLAHE per patch-sized tile", "tile"),
                                 ("CLAHE over the entire image", "image")]), "Contrast correction")
        g.add("label_map", QLineEdit(), "Label map", "VALUE:CLASS pairs, e.g. 0:2,255:1 for ISBI "
              "labels; empty = values are classes")
        g.add("seed", spin(0, 0, 2**31 - 1), "Random seed")
        g.add("overwrite", check(False), "Overwrite existing patches")
        a = Form()
        a.add("augment", check(False), "Augment while writing")
        a.add("flip", check(True), "Flips")
        a.add("rot90", check(True), "90° rotations")
        a.add("blur_prob", dspin(0.0, 0, 1, 0.05), "Gaussian blur probability")
        a.add("motion_blur_prob", dspin(0.0, 0, 1, 0.05), "Motion blur probability")
        a.add("equalize", combo(["none", "hist", "clahe", "random"]), "Histogram equalisation")
        a.add("equalize_prob", dspin(0.5, 0, 1, 0.05), "Equalisation probability")
        a.add("brightness", dspin(0.0, 0, 1, 0.05), "Brightness shift (max)")
        a.add("contrast", dspin(0.0, 0, 1, 0.05), "Contrast change (max)")
        a.add("gamma", dspin(0.0, 0, 2, 0.05), "Gamma (log range)")
        a.add("elastic_prob", dspin(0.0, 0, 1, 0.05), "Elastic deformation probability")
        self.add_fold(a, "Augmentation (advanced)")
        self.f, self.g, self.a = f, g, a
        self.preview_button = QPushButton("Preview valid centres")
        self.preview_button.setObjectName("preview")
        self.preview_button.clicked.connect(lambda: self.preview_mask())
        self.column.addWidget(self.preview_button)
        self.mask_view = ImageView("valid patch centres of the first pair (green)")
        self.mask_note = QLabel("")
        self.grid_views: list[ImageView] = []
        grid = QGridLayout()
        for i in range(GRID[0] * GRID[1]):
            view = ImageView("")
            view.setMinimumSize(64, 64)
            self.grid_views.append(view)
            grid.addWidget(view, i // GRID[1], i % GRID[1])
        self.preview_layout.addWidget(self.mask_view, 3)
        self.preview_layout.addWidget(self.mask_note)
        self.preview_layout.addWidget(QLabel("Sampled patches"))
        self.preview_layout.addLayout(grid, 2)
        self.load_settings()

    def problem(self) -> str | None:
        f = self.f
        return (need_dir(f.value("images"), "EM image folder")
                or need_dir(f.value("labels"), "label folder")
                or need_out(f.value("out_images"), "image patch folder")
                or need_out(f.value("out_labels"), "label patch folder"))

    def build_spec(self):
        from membrane_py.augment.patches import PatchJob
        from membrane_py.augment.transforms import AugmentConfig

        f, g, a = self.f, self.g, self.a
        augment = None
        if a.value("augment"):
            augment = AugmentConfig(
                flip=a.value("flip"), rot90=a.value("rot90"), blur_prob=a.value("blur_prob"),
                motion_blur_prob=a.value("motion_blur_prob"), equalize=a.value("equalize"),
                equalize_prob=a.value("equalize_prob"), brightness=a.value("brightness"),
                contrast=a.value("contrast"), gamma=a.value("gamma"),
                elastic_prob=a.value("elastic_prob"))
        return PatchJob(
            images=f.value("images"), labels=f.value("labels"), out_images=f.value("out_images"),
            out_labels=f.value("out_labels"), patch_size=g.value("patch_size"),
            density=g.value("density"), rotate=g.value("rotate"),
            angle_step=g.value("angle_step"), downsample=g.value("downsample"),
            contrast=g.value("contrast"), label_map=parse_label_map(g.value("label_map")),
            augment=augment, seed=g.value("seed"), overwrite=g.value("overwrite"))

    def preview_mask(self, centres: list[tuple[int, int]] = ()) -> bool:
        """Show where patch centres may lie in the first pair (a small read of one image)."""
        from membrane_py.augment.patches import valid_centre_preview

        if self.validation_message() is not None:
            self.mask_note.setStyleSheet(ERROR_STYLE)
            self.mask_note.setText(self.validation_message())
            return False
        files = listing(self.f.value("labels"), limit=1)
        first = read_preview(files[0]) if files else None
        if first is None or first.shape[0] * first.shape[1] > PREVIEW_MAX_PIXELS:
            self.mask_note.setText("no preview: the first label image is missing or too large")
            return False
        try:
            src, valid = valid_centre_preview(self.build_spec())
        except (ValueError, OSError) as exc:
            self.mask_note.setStyleSheet(ERROR_STYLE)
            self.mask_note.setText(str(exc).splitlines()[0])
            return False
        self.mask_view.show_array(mask_overlay(src.label, valid, centres))
        self.mask_note.setStyleSheet("")
        self.mask_note.setText(f"{src.name}: {int(valid.sum())} valid centres of "
                               f"{valid.size} pixels; red = patches cut")
        return True

    def handle_finished(self, info) -> None:
        if info.state != "done":
            return
        out = Path(self.f.value("out_images"))
        manifest = out / "manifest.json"
        centres = []
        if manifest.is_file():
            records = json.loads(manifest.read_text()).get("patches", [])
            centres = [(r["cy"], r["cx"]) for r in records if r.get("source") == 0]
        self.preview_mask(centres)
        files = listing(out, limit=len(self.grid_views))
        for view, path in zip(self.grid_views, files + [None] * len(self.grid_views),
                              strict=False):
            view.show_array(None if path is None else read_preview(path))
