"""Suggest tab: where to annotate next. Runs a ``suggest`` job (a network's uncertainty over
a VAST layer or a volume, or an uncertainty layer written before), lists the ranked regions,
and a double-click on one moves VAST's view there."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLabel, QTableWidget, QTableWidgetItem

from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.regions import fill_layers
from membrane_py.tabs.widgets import (
    Form,
    PathEdit,
    auto_spin,
    check,
    combo,
    dspin,
    need_file,
    need_out,
    spin,
)
from membrane_py.vastapi.address import DEFAULT_VAST

#: the annotation layer choice that means "the 'membrane-py suggestions' layer"
OWN_LAYER = -1
COLUMNS = ("rank", "x", "y", "z", "score")


class SuggestTab(JobTab):
    title = "Suggest"
    group = "suggest"
    run_text = "Suggest"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        self.vast = None  # the Connect tab's VastState
        f = self.add_form(Form(), "Uncertainty")
        f.add("checkpoint", PathEdit("file", "Networks (*.pt *.onnx)"), "Network",
              "predict with this network first; leave empty to rank an uncertainty layer")
        f.add("map", PathEdit("file", "VAST descriptors (*.vsvi)"), "or earlier layer",
              "the uncertainty.vsvi of an earlier prediction (score by instability: its "
              "probability.vsvi)")
        f.add("score", combo(["uncertainty", "instability"]),
              "Score by", "uncertainty: the network's doubt (TTA spread or entropy); "
              "instability: where the membrane call joins or splits cells")
        f.add("source", PathEdit("file", placeholder="the connected VAST"), "Source",
              "empty: the VAST of the Connect tab; else a volume file, folder or 'synthetic'")
        f.add("layer", combo([]), "Image layer", "the VAST layer holding the EM")
        f.add("tta", spin(4, 1, 8), "Augmentations", "uncertainty = spread between this many "
              "flips/rotations; 1: entropy of the membrane probability (faster)")
        r = self.add_form(Form(), "Suggestions")
        r.add("k", spin(10, 1, 1000), "How many")
        r.add("size", spin(256, 2, 65536, suffix=" px"), "Region side", "mip-0 pixels")
        r.add("z_spacing", spin(3, 1, 100000), "Sections apart",
              "suggestions on nearer sections are at least one region side apart in x or y")
        r.add("sample", auto_spin(dspin(1.0, 0.0, 100.0, 0.5, 2), "off"), "Sampling power",
              "P > 0: drawn at random with probability proportional to score^P (more "
              "kinds of place); off: the top-scored regions")
        r.add("out", PathEdit("out"), "Write to", "the predicted layers and suggestions.csv")
        r.add("send", check(True), "Send to VAST as a skeleton",
              "one node per suggestion, in rank order")
        r.add("anno_layer", combo([("'membrane-py suggestions' (made when missing)",
                                    OWN_LAYER)]), "Annotation layer")
        self.f, self.r = f, r
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.cellDoubleClicked.connect(self.jump_to)
        self.jump_status = QLabel("double-click a suggestion to move VAST's view there")
        self.jump_status.setWordWrap(True)
        self.preview_layout.addWidget(self.table, 1)
        self.preview_layout.addWidget(self.jump_status)
        self.suggestions: list = []
        f["score"].currentIndexChanged.connect(self._show_rows)
        self.load_settings()
        self._show_rows()

    def _show_rows(self) -> None:
        """Augmentations only make the uncertainty; instability needs the probability."""
        self.f.set_row_visible("tta", self.f.value("score") == "uncertainty")

    def set_vast(self, state) -> None:
        """Fill the layer lists from the Connect tab."""
        self.vast = state
        fill_layers(self.f["layer"], state.layers, None)
        fill_layers(self.r["anno_layer"], state.layers,
                    ("'membrane-py suggestions' (made when missing)", OWN_LAYER))
        self.revalidate()

    def _address(self) -> str:
        return self.vast.address if self.vast is not None and self.vast.connected else ""

    def problem(self) -> str | None:
        f, r = self.f, self.r
        if f.value("checkpoint"):
            msg = need_file(f.value("checkpoint"), "network", (".pt", ".onnx"))
            if msg is None and not f.value("source") and not self._address():
                msg = "connect to VAST in the Connect tab first, or choose a volume as the source"
        elif f.value("map"):
            msg = need_file(f.value("map"), "earlier layer")
        else:
            msg = "choose a network (or a layer written before)"
        if msg is None and r.value("send") and not self._address():
            msg = "'send to VAST' needs a connected VAST: connect, or untick it"
        return msg or need_out(r.value("out"), "output folder")

    def build_spec(self):
        from membrane_py.predict.suggest import SuggestJob

        f, r = self.f, self.r
        layer, anno = f["layer"].currentData(), r["anno_layer"].currentData()
        return SuggestJob(
            checkpoint=f.value("checkpoint") or None,
            map=None if f.value("checkpoint") else f.value("map") or None,
            score=f.value("score"),
            source=f.value("source") or self._address() or DEFAULT_VAST,
            layer=int(layer) if layer is not None and not f.value("source") else 0,
            tta=f.value("tta"), k=r.value("k"), size=r.value("size"),
            z_spacing=r.value("z_spacing"), sample_power=r.value("sample") or None,
            out=r.value("out"),
            vast=self._address() if r.value("send") else None,
            anno_layer=None if anno in (None, OWN_LAYER) else int(anno))

    def job_started(self, spec) -> None:
        self.show_suggestions([])

    def handle_finished(self, info) -> None:
        csv = Path(self.r.value("out")) / "suggestions.csv"
        if info.state == "done" and csv.is_file():
            from membrane_py.predict.suggest import read_suggestions

            self.show_suggestions(read_suggestions(csv))

    def show_suggestions(self, suggestions: list) -> None:
        """Fill the table, best first."""
        self.suggestions = list(suggestions)
        self.table.setRowCount(len(self.suggestions))
        for i, s in enumerate(self.suggestions):
            for j, value in enumerate((s.rank, s.x, s.y, s.z, f"{s.score:.3f}")):
                self.table.setItem(i, j, QTableWidgetItem(str(value)))

    def jump_to(self, row: int, _column: int = 0) -> None:
        """Move VAST's view to the centre of suggestion ``row``."""
        from membrane_py.vastapi.address import parse_vast_address
        from membrane_py.vastapi.client import VastClient, VastError

        s = self.suggestions[row]
        if not self._address():
            self.jump_status.setText("connect to VAST in the Connect tab to jump there")
            return
        try:
            with VastClient(*parse_vast_address(self._address())) as client:
                client.set_view_coordinates(s.x, s.y, s.z)
        except (ConnectionError, OSError, VastError) as exc:
            self.jump_status.setText(f"VAST did not move: {exc}")
            return
        self.jump_status.setText(f"VAST shows suggestion {s.rank}: x {s.x}, y {s.y}, z {s.z}")
