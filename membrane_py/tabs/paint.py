"""Paint tab: write a prediction into a VAST segmentation layer so it can be proofread, as a
thresholded mask or as 2D / 3D instances, over a region, keeping what the user painted."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QLineEdit

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
    dspin,
    spin,
)

MODES = [("threshold mask", "mask"), ("2D instances (per section)", "instances2d"),
         ("3D instances (linked across sections)", "instances3d"),
         ("label volume as it is", "labels")]
NEW_LAYER = -1
#: Side (px) of the painted section read back for the preview.
PREVIEW = 1024


class PaintTab(JobTab):
    title = "Paint"
    group = "paint"
    run_text = "Paint into VAST"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        self.vast = None
        f = self.add_form(Form(), "What")
        f.add("source", PathEdit("file", placeholder="a layer of the connected VAST"), "Source",
              "empty: the prediction layer chosen below in the connected VAST; else a "
              "probability or label volume (.vsvi, folder, .tif, .zarr)")
        f.add("source_layer", combo([]), "Prediction layer", "VAST layer holding the prediction")
        f.add("mode", combo(MODES, "instances2d"), "Paint as")
        f.add("threshold", dspin(0.5, 0.0, 1.0, 0.05), "Threshold",
              "probability at or above which a pixel is membrane")
        f.add("class_name", QLineEdit("membrane"), "Segment name (mask)")
        f.add("invert", check(False), "Invert (paint below the threshold)")
        w = self.add_form(Form(), "Where")
        w.add("layer", combo([("a new segmentation layer", NEW_LAYER)]), "Target layer")
        w.add("layer_name", QLineEdit("membrane-py predictions"), "New layer name")
        w.add("mip", spin(0, 0, 16), "Mip level")
        add_region_fields(w)
        w.add("keep_user_paint", check(True), "Keep the user's paint",
              "voxels already painted in the target layer are left as they are")
        w.add("save", check(True), "Save the layer after painting")
        self.f, self.w = f, w
        f["mode"].currentIndexChanged.connect(self._show_rows)
        w["layer"].currentIndexChanged.connect(self._show_rows)
        self.summary = QLabel("Painted voxels and segments are listed here after a run.")
        self.summary.setWordWrap(True)
        self.painted = ImageView("the first painted section appears here")
        self.preview_layout.addWidget(self.summary)
        self.preview_layout.addWidget(self.painted, 1)
        self._show_rows()
        self.load_settings()

    def _show_rows(self) -> None:
        mask = self.f.value("mode") == "mask"
        self.f.set_row_visible("class_name", mask)
        self.f.set_row_visible("invert", self.f.value("mode") != "labels")
        self.f.set_row_visible("threshold", self.f.value("mode") != "labels")
        self.w.set_row_visible("layer_name", self.w.value("layer") == NEW_LAYER)

    def set_vast(self, state) -> None:
        """Fill the source and target layer lists from the Connect tab."""
        self.vast = state
        fill_layers(self.f["source_layer"], state.layers, None)
        fill_layers(self.w["layer"], state.layers, ("a new segmentation layer", NEW_LAYER))
        set_region_layers(self.w, state.layers)
        self.w["mip"].setMaximum(max(state.n_mips - 1, 0) if state.connected else 16)
        self._show_rows()
        self.revalidate()

    def problem(self) -> str | None:
        if self.vast is None or not self.vast.connected:
            return "connect to VAST in the Connect tab first: painting writes into a VAST layer"
        if not self.f.value("source") and self.f["source_layer"].count() == 0:
            return "choose the prediction layer (load a prediction into VAST first)"
        return None

    def build_spec(self):
        from membrane_py.edit.paint import PaintJob

        f, w = self.f, self.w
        address = self.vast.address if self.vast is not None else ""
        layer = w.value("layer")
        source_layer = f["source_layer"].currentData()
        return PaintJob(source=f.value("source") or address,
                        source_layer=int(source_layer) if source_layer is not None else 0,
                        vast=address, mode=f.value("mode"), region=region_spec(w),
                        mip=w.value("mip"), threshold=f.value("threshold"),
                        class_name=f.value("class_name"), invert=f.value("invert"),
                        layer=None if layer == NEW_LAYER else int(layer),
                        layer_name=w.value("layer_name"),
                        overwrite=not w.value("keep_user_paint"), save=w.value("save"))

    def handle_finished(self, info) -> None:
        r = info.result or {}
        if info.state == "done" and r:
            self.summary.setText(
                f"layer {r.get('layer')}: {r.get('segments_created', 0)} segments created, "
                f"{r.get('voxels_written', 0)} voxels painted, {r.get('voxels_kept', 0)} "
                "voxels of your paint kept")
            if r.get("regions"):
                self.show_painted(int(r["layer"]), r["regions"][0], self.w.value("mip"))

    def show_painted(self, layer: int, region: list[int], mip: int) -> bool:
        """Read back the first section of the first painted region (at most PREVIEW px
        square) from VAST and show its segments in colour: a small read for a preview."""
        from membrane_py.codes import palette_rgb
        from membrane_py.geometry import Box
        from membrane_py.tabs.connect import QUERY_TIMEOUT
        from membrane_py.vastapi.address import parse_vast_address
        from membrane_py.vastapi.client import VastClient, VastError

        x0, x1, y0, y1, z0, _ = region
        box = Box(z0, z0 + 1, y0, min(y1 + 1, y0 + PREVIEW), x0, min(x1 + 1, x0 + PREVIEW))
        try:
            with VastClient(*parse_vast_address(self.vast.address), timeout=QUERY_TIMEOUT,
                            connect_timeout=QUERY_TIMEOUT) as vast:
                vast.set_api_layers_enabled(True)
                vast.set_selected_api_layer(layer)
                ids = vast.get_seg_image(box, mip)[0]
        except (OSError, ValueError, VastError):
            return False
        self.painted.show_array(palette_rgb(ids))
        return True
