"""Ground-truth tab: neuron instances -> membrane labels, membrane -> skeleton labels, or
import of binary / mapped / valued label images; previews the first input and its result."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QLineEdit

from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.widgets import (
    Form,
    ImageView,
    PathEdit,
    check,
    combo,
    listing,
    need_dir,
    need_out,
    read_preview,
    spin,
    stretch,
)


def parse_label_map(text: str) -> dict[int, int] | None:
    """``'0:2,255:1'`` -> {0: 2, 255: 1}; empty -> None."""
    text = text.strip()
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition(":")
        try:
            if not sep:
                raise ValueError
            out[int(key)] = int(value)
        except ValueError:
            raise ValueError(f"label map entry {part.strip()!r} is not VALUE:CLASS; write e.g. "
                             "0:2,255:1") from None
    return out


class GroundTruthTab(JobTab):
    title = "Ground truth"
    group = "gt"
    run_text = "Convert"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        f = self.add_form(Form())
        f.add("conversion", combo([("neuron instances -> membrane", "membrane"),
                                   ("membrane -> skeleton", "skeleton"),
                                   ("import label images", "import")]), "Conversion")
        f.add("input", PathEdit("dir"), "Input folder", "a folder of label images (PNG/TIFF)")
        f.add("output", PathEdit("out"), "Output folder", "where the converted PNGs go")
        f.add("thickness", spin(3, 1, 64, suffix=" px"), "Membrane thickness",
              "side of the square that marks a membrane between two instances")
        f.add("fill_ecs", check(False), "Fill extracellular space",
              "label-0 pixels (extracellular space) become membrane")
        f.add("has_unknown", check(True), "Labels contain unknown (0)",
              "keep 0 as 'unknown' instead of treating it as background")
        f.add("filter_size", combo([("1 (no filter)", 1), ("3", 3), ("5", 5)], 3),
              "Gaussian filter size")
        f.add("mode", combo([("two-valued mask", "binary"), ("value:class map", "map"),
                             ("each value a class", "values")]), "Import mode")
        f.add("membrane_value", spin(0, 0, 65535), "Membrane value",
              "the mask value that means membrane (the other value is non-membrane)")
        f.add("label_map", QLineEdit(), "Label map", "VALUE:CLASS pairs, e.g. 0:2,255:1")
        self.form = f
        f["conversion"].currentIndexChanged.connect(self._show_rows)
        f["conversion"].currentIndexChanged.connect(self._preview_input)
        f["input"].textChanged.connect(self._preview_input)
        self.input_view = ImageView("input preview")
        self.result_view = ImageView("result preview (after Convert)")
        row = QHBoxLayout()
        row.addWidget(self.input_view)
        row.addWidget(self.result_view)
        self.preview_layout.addLayout(row)
        self._show_rows()
        self.load_settings()

    def _show_rows(self) -> None:
        conv = self.form.value("conversion")
        for name, on in (("thickness", conv == "membrane"), ("fill_ecs", conv == "membrane"),
                         ("has_unknown", conv == "skeleton"), ("filter_size", conv == "skeleton"),
                         ("mode", conv == "import"), ("membrane_value", conv == "import")):
            self.form.set_row_visible(name, on)

    def _preview_input(self) -> None:
        from membrane_py.codes import palette_rgb

        files = listing(self.form.value("input"), limit=1)
        image = read_preview(files[0]) if files else None
        if image is not None and image.ndim == 2 and self.form.value("conversion") == "membrane":
            self.input_view.show_array(palette_rgb(image))  # one colour per instance
        else:
            self.input_view.show_array(None if image is None else stretch(image))

    def problem(self) -> str | None:
        f = self.form
        return need_dir(f.value("input"), "input folder") or need_out(f.value("output"),
                                                                        "output folder")

    def build_spec(self):
        from membrane_py.augment.groundtruth import GtJob

        f = self.form
        return GtJob(conversion=f.value("conversion"), input=f.value("input"),
                     output=f.value("output"), thickness=f.value("thickness"),
                     fill_ecs=f.value("fill_ecs"), has_unknown=f.value("has_unknown"),
                     filter_size=f.value("filter_size"), mode=f.value("mode"),
                     membrane_value=f.value("membrane_value"),
                     label_map=parse_label_map(f.value("label_map")))

    def handle_finished(self, info) -> None:
        if info.state != "done":
            return
        files = listing(self.form.value("output"), limit=100_000)
        first_in = listing(self.form.value("input"), limit=1)
        stem = Path(first_in[0]).stem if first_in else ""
        match = [p for p in files if p.stem.startswith(stem)] or files
        image = read_preview(match[0]) if match else None
        self.result_view.show_array(None if image is None else stretch(image))
