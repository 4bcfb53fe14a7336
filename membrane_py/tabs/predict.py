"""Predict tab: a network over a VAST layer (or a volume file), a region (whole, box, view,
skeleton anchors or nodes), mip, backend and outputs; optionally loads the result into VAST.
Shows the tiles as they are written, the throughput and the ETA. "Follow VAST view" runs the
follow job instead (:mod:`membrane_py.predict.follow`): tiles around VAST's view as the user
browses, until Cancel."""

from __future__ import annotations

import os
import time
from pathlib import Path

from PySide6.QtWidgets import QLabel, QLineEdit

from membrane_py.events import Event
from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.regions import (
    add_region_fields,
    fill_layers,
    region_spec,
    set_region_layers,
)
from membrane_py.tabs.widgets import (
    Form,
    ImageView,
    PathEdit,
    check,
    combo,
    need_file,
    need_out,
    read_preview,
    spin,
)

#: Seconds between two looks for the newest tile.
PREVIEW_EVERY = 0.3
OUTPUTS = (("probability", "probability of one class"), ("classes", "class map"),
           ("rgb", "RGB of three classes"), ("per_class", "one layer per class"))


def newest_tile(out: str | Path, mip: int) -> Path | None:
    """The most recently written PNG tile at ``mip`` under a prediction folder."""
    best, best_time = None, -1.0
    root = Path(out)
    if not root.is_dir():
        return None
    for output in os.scandir(root):
        level = Path(output.path) / f"mip{mip}"
        if not output.is_dir() or not level.is_dir():
            continue
        sections = sorted((e for e in os.scandir(level) if e.is_dir()),
                          key=lambda e: e.stat().st_mtime)
        for section in sections[-2:]:
            for entry in os.scandir(section.path):
                if entry.name.endswith(".png"):
                    t = entry.stat().st_mtime
                    if t > best_time:
                        best, best_time = Path(entry.path), t
    return best


class PredictTab(JobTab):
    title = "Predict"
    group = "predict"
    run_text = "Predict"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        self.vast = None  # the Connect tab's VastState
        f = self.add_form(Form(), "Network and data")
        f.add("checkpoint", PathEdit("file", "Networks (*.pt *.onnx)",
                                     placeholder="the starter membrane model"), "Network",
              "a trained .pt or .onnx; empty (or 'starter'): the membrane model shipped with "
              "membrane-py")
        f.add("source", PathEdit("file", placeholder="the connected VAST"), "Source",
              "empty: the VAST of the Connect tab; else a volume file, folder or 'synthetic'")
        f.add("layer", combo([]), "Image layer", "the VAST layer holding the EM")
        f.add("mip", spin(0, 0, 16), "Mip level", "0 = full resolution; mip m halves x and y "
              "m times")
        add_region_fields(f)
        f.add("follow", check(False), "Follow VAST view", "predict what VAST shows as you "
              "browse, nearest tiles first, until Cancel (region and mip follow the view; "
              "tiles go to <folder>/mip<m>/)")
        o = self.add_form(Form(), "Outputs")
        o.add("out", PathEdit("out"), "Write tiles to")
        o.add("layer_name", QLineEdit("membrane prediction"), "Layer name")
        for name, label in OUTPUTS:
            o.add(f"out_{name}", check(name == "probability"), label)
        o.add("load_in_vast", check(True), "Load into VAST when done")
        o.add("pyramid", check(True), "Build the mip pyramid")
        o.add("zarr", check(False), "Also write OME-Zarr")
        o.add("overwrite", check(False), "Overwrite finished tiles",
              "off: a rerun skips tiles already written (resume)")
        a = Form()
        a.add("backend", combo(["auto", "torch", "onnx"]), "Backend")
        a.add("device", combo(["auto", "cpu", "cuda"]), "Device")
        a.add("prob_class", QLineEdit(), "Probability class", "class name or 1-based number; "
              "empty = membrane, else the last class")
        a.add("chunk_z", spin(16, 1, 1024), "Sections per read")
        a.add("margin", spin(64, 0, 1024), "Context margin (px)")
        a.add("skip_blank", check(True), "Skip blank tiles")
        a.add("prefetch", spin(2, 0, 16), "Chunks read ahead")
        a.add("adapt_bn", combo([("as the network validated", "auto"), ("always", "on"),
                                 ("never", "off")]), "Adapt batch norm to this EM",
              "re-estimate the network's batch-norm statistics on patches of the EM first (no "
              "labels needed); by default when the network scored better so in training")
        self.add_fold(a, "Advanced")
        self.f, self.o, self.a = f, o, a
        self.tile_view = ImageView("tiles appear here as they are written")
        self.tile_caption = QLabel("")
        self.speed = QLabel("")
        self.speed.setObjectName("speed")
        self.preview_layout.addWidget(self.tile_view, 1)
        self.preview_layout.addWidget(self.tile_caption)
        self.preview_layout.addWidget(self.speed)
        self.tiles_shown = 0
        self.follow_mip: int | None = None  # the mip of the tiles a follow job writes
        self._last_look = 0.0
        self.load_settings()

    def set_vast(self, state) -> None:
        """Fill the layer list from the Connect tab (keeps the chosen layer when present)."""
        self.vast = state
        fill_layers(self.f["layer"], state.layers, None)
        set_region_layers(self.f, state.layers)
        self.f["mip"].setMaximum(max(state.n_mips - 1, 0) if state.connected else 16)
        self.revalidate()

    def _network(self) -> str:
        """The chosen network file, or the shipped starter model's name when empty."""
        from membrane_py.train.checkpoint import STARTER

        return self.f.value("checkpoint") or STARTER

    def _address(self) -> str:
        return self.vast.address if self.vast is not None and self.vast.connected else ""

    def problem(self) -> str | None:
        f, o = self.f, self.o
        from membrane_py.train.checkpoint import STARTER

        network = self._network()
        msg = None if network == STARTER else need_file(network, "network", (".pt", ".onnx"))
        if msg is None and not f.value("source") and not self._address():
            msg = "connect to VAST in the Connect tab first, or choose a volume as the source"
        if msg is None and not f.value("source") and f["layer"].count() == 0:
            msg = "the connected VAST has no layer to predict"
        if msg is None and f.value("region") in ("view", "anchors", "nodes") \
                and not self._address():
            msg = f"region '{f.value('region')}' asks VAST: connect in the Connect tab first"
        if msg is None and f.value("follow") and not self._address():
            msg = "following the view needs a connected VAST: connect in the Connect tab first"
        if msg is None and o.value("load_in_vast") and not self._address():
            msg = "'load into VAST' needs a connected VAST: connect, or untick it"
        if msg is None:
            msg = need_out(o.value("out"), "tile folder")
        if msg is None and not any(o.value(f"out_{n}") for n, _ in OUTPUTS):
            msg = "tick at least one output"
        return msg

    def build_spec(self):
        from membrane_py.predict.job import PredictJob

        f, o, a = self.f, self.o, self.a
        source = f.value("source") or self._address()
        layer = f["layer"].currentData()
        job = PredictJob(
            checkpoint=self._network(), source=source, out=o.value("out"),
            layer=int(layer) if layer is not None and not f.value("source") else 0,
            vast=self._address() or None, backend=a.value("backend"), device=a.value("device"),
            mip=f.value("mip"), region=region_spec(f), layer_name=o.value("layer_name"),
            outputs=[n for n, _ in OUTPUTS if o.value(f"out_{n}")],
            prob_class=a.value("prob_class") or None, pyramid=o.value("pyramid"),
            zarr=o.value("zarr"), load_in_vast=o.value("load_in_vast"),
            skip_blank=a.value("skip_blank"), overwrite=o.value("overwrite"),
            chunk=[a.value("chunk_z"), 1024, 1024], margin=a.value("margin"),
            prefetch=a.value("prefetch"),
            adapt_bn={"auto": None, "on": True, "off": False}[a.value("adapt_bn")])
        if not f.value("follow"):
            return job
        from membrane_py.predict.follow import FollowJob

        return FollowJob(predict=job)

    def job_started(self, spec) -> None:
        self.follow_mip = None
        self.tiles_shown = 0
        self.tile_view.clear_image()
        self.tile_caption.setText("")
        self.speed.setText("")

    def handle_event(self, event: Event) -> None:
        if event.kind == "progress":
            d = event.data
            if "mip" in d and event.task == "follow":
                self.follow_mip = d["mip"]
                if d.get("stage") == "written":
                    self.speed.setText(f"{event.message}; {event.done} tiles written")
            if "written" in d:
                rate = self.panel.rate
                self.speed.setText(
                    f"{d['written']} written, {d.get('blank', 0)} blank, "
                    f"{d.get('resumed', 0)} kept from an earlier run; "
                    + (f"{rate:.2f} tiles/s, " if rate == rate else "")
                    + f"{d.get('mb_s', 0.0):.1f} MB/s of EM")
            now = time.monotonic()
            if now - self._last_look >= PREVIEW_EVERY or event.done == event.total:
                self._last_look = now
                self.refresh_tile()

    def refresh_tile(self) -> bool:
        """Show the newest tile written (a small read); True when one was shown."""
        mip = self.follow_mip
        path = newest_tile(self.o.value("out"), self.f.value("mip")) if mip is None else \
            newest_tile(Path(self.o.value("out")) / f"mip{mip}", mip)
        image = read_preview(path) if path is not None else None
        if image is None:
            return False
        self.tile_view.show_array(image)
        self.tiles_shown += 1
        self.tile_caption.setText(str(path))
        return True

    def handle_finished(self, info) -> None:
        self.refresh_tile()
