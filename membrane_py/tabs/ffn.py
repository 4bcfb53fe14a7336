"""FFN tab: flood-filling networks in three steps: class-balanced training coordinates from
ground truth (``ffn-prep``), training with a live loss curve (``ffn-train``) and
segmentation of a volume or a box of it (``ffn-infer``), optionally painted into VAST.
Volumes are any volume form (file, folder, ``synthetic:...``) or, left empty, a layer of the
VAST connected in the Connect tab."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QLineEdit

from membrane_py.events import Event
from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.regions import fill_layers
from membrane_py.tabs.widgets import (
    CurvePlot,
    Form,
    PathEdit,
    auto_spin,
    check,
    combo,
    dspin,
    need_file,
    spin,
)

MODES = [("prepare training coordinates", "prep"), ("train a network", "train"),
         ("segment a volume", "infer")]
SELECTED = -1  # VAST's selected segmentation layer
#: Steps the running mean of the (noisy, per-step) training loss spans.
MEAN_OF = 25
#: Each form's volume fields and the VAST layer rows that only count while they are empty.
LAYER_ROWS = {"p": (("labels", "labels_layer"),),
              "t": (("image", "image_layer"), ("labels", "labels_layer")),
              "i": (("image", "image_layer"),)}
#: What the reference model uses; geometry fields left at these build no ``model``.
REFERENCE = (12, 32, "33,33,33", "8,8,8")


def volume_problem(text: str, what: str, address: str) -> str | None:
    """The message for a volume field: empty means the connected VAST."""
    if not text:
        return None if address else (f"choose the {what}, or connect to VAST in the "
                                     "Connect tab to read it from there")
    if text.startswith(("synthetic", "vast://")):
        return None
    if not Path(text).exists() and not Path(text.rsplit(":", 1)[0]).exists():
        return f"{what} {text} does not exist: pick a volume file or folder with …"
    return None


def optional_box(text: str) -> list[int] | None:
    from membrane_py.geometry import parse_ints

    return parse_ints(text, 6, "box") if text else None


def optional_float(text: str, what: str) -> float | None:
    from membrane_py.geometry import parse_floats

    return parse_floats(text, what)[0] if text else None


def zyx(text: str, what: str) -> tuple[int, int, int]:
    from membrane_py.geometry import parse_ints

    return tuple(parse_ints(text, 3, f"{what} (z,y,x)"))


def seed_points(text: str) -> list[list[int]] | None:
    """``x,y,z; x,y,z`` -> mip-0 points, None when empty (peak seeds)."""
    from membrane_py.geometry import parse_ints

    parts = [p for p in text.split(";") if p.strip()]
    return [parse_ints(p, 3, "seed (x,y,z)") for p in parts] or None


def geometry_fields(form: Form) -> None:
    depth, features, fov, deltas = REFERENCE
    form.add("depth", spin(depth, 1, 64), "Residual modules")
    form.add("features", spin(features, 1, 1024), "Feature maps")
    form.add("fov", QLineEdit(fov), "Field of view (z,y,x)", "odd sides; sparse z: 17,33,33")
    form.add("deltas", QLineEdit(deltas), "FOV step (z,y,x)", "sparse z: 4,8,8")


def model_of(form: Form):
    from membrane_py.models.ffn import FFNConfig

    return FFNConfig(depth=form.value("depth"), features=form.value("features"),
                     fov=zyx(form.value("fov"), "field of view"),
                     deltas=zyx(form.value("deltas"), "FOV step"))


class FFNTab(JobTab):
    title = "FFN"
    group = "ffn"
    run_text = "Run"

    def __init__(self, controller, settings, parent=None) -> None:
        super().__init__(controller, settings, parent)
        from membrane_py.edit.instances import COLORINGS
        from membrane_py.ffn.predictor import PRECISIONS
        from membrane_py.ffn.train import OPTIMIZERS

        self.vast = None
        m = self.add_form(Form())
        m.add("mode", combo(MODES), "Step", "prepare coordinates from ground truth, train, "
              "or segment with a trained (or imported) network")

        p = self.add_form(Form(), "Ground truth -> training coordinates")
        p.add("labels", PathEdit("file", placeholder="a layer of the connected VAST"),
              "Label volume", "ground-truth ids; empty: a segmentation layer of VAST")
        p.add("labels_layer", combo([("VAST's selected one", SELECTED)]), "Label layer")
        p.add("output", PathEdit("save", "Coordinates (*.npz)"), "Write coordinates to",
              "a .npz file")
        p.add("box", QLineEdit(), "Box (mip 0)", "minx,maxx,miny,maxy,minz,maxz; empty = all")
        p["box"].setPlaceholderText("whole volume")
        p.add("mip", spin(0, 0, 16), "Mip level")
        p.add("min_size", spin(10000, 0, 10**9), "Dust below (voxels)",
              "objects smaller than this count as background")
        pa = Form()
        pa.add("radius", QLineEdit("24,24,24"), "Local-mass radius (z,y,x)",
               "fov//2 + deltas of the model to train")
        pa.add("margin", QLineEdit("24,24,24"), "Border without coordinates (z,y,x)")
        pa.add("thresholds", QLineEdit(), "Partition thresholds",
               "increasing fractions; empty = the reference's 12")
        pa.add("max_per_partition", spin(100000, 1, 10**9), "Coordinates per partition")
        pa.add("seed", spin(0, 0, 2**31 - 1), "Random seed")

        t = self.add_form(Form(), "Train")
        t.add("image", PathEdit("file", placeholder="a layer of the connected VAST"),
              "Image volume", "the EM; empty: an image layer of VAST")
        t.add("image_layer", combo([]), "Image layer")
        t.add("labels", PathEdit("file", placeholder="a layer of the connected VAST"),
              "Label volume")
        t.add("labels_layer", combo([("VAST's selected one", SELECTED)]), "Label layer")
        t.add("coordinates", PathEdit("file", "Coordinates (*.npz)"), "Coordinates",
              "the .npz of the first step")
        t.add("output", PathEdit("save", "FFN checkpoints (*.pt)"), "Save network to",
              "a .pt checkpoint; an existing one is continued")
        t.add("steps", spin(10000, 1, 10**9), "Steps", "optimiser steps in total")
        t.add("batch_size", spin(4, 1, 1024), "Batch size")
        t.add("optimizer", combo(list(OPTIMIZERS)), "Optimizer")
        t.add("learning_rate", dspin(0.001, 1e-7, 1.0, 1e-4, 6), "Learning rate")
        ta = Form()
        geometry_fields(ta)
        ta.add("momentum", dspin(0.9, 0.0, 0.999, 0.05), "Momentum")
        ta.add("clip", dspin(0.7, 0.001, 100.0, 0.1), "Gradient clip",
               "each gradient entry is clipped to +-clip")
        ta.add("checkpoint_every", spin(1000, 1, 10**9), "Checkpoint every (steps)")
        ta.add("resume", check(True), "Continue an existing checkpoint")
        ta.add("image_mean", QLineEdit(), "Normalisation mean", "empty = measured")
        ta.add("image_stddev", QLineEdit(), "Normalisation stddev", "empty = measured")
        ta.add("device", combo(["auto", "cpu", "cuda"]), "Device")
        ta.add("seed", spin(0, 0, 2**31 - 1), "Random seed")

        i = self.add_form(Form(), "Segment")
        i.add("image", PathEdit("file", placeholder="a layer of the connected VAST"),
              "Image volume", "the EM; empty: an image layer of VAST")
        i.add("image_layer", combo([]), "Image layer")
        i.add("checkpoint", PathEdit("file", "FFN networks (*.pt *.index)"), "Network",
              "an FFN checkpoint (.pt) or a google/ffn TensorFlow checkpoint (.index)")
        i.add("output", PathEdit("save"), "Write objects to",
              ".zarr, .tif or .npz, or a folder for RGB tiles with a .vsvi")
        i.add("box", QLineEdit(), "Box (mip 0)", "minx,maxx,miny,maxy,minz,maxz; empty = all")
        i["box"].setPlaceholderText("whole volume")
        i.add("mip", spin(0, 0, 16), "Mip level")
        i.add("seeds", QLineEdit(), "Seeds (mip 0)", "x,y,z; x,y,z ... to grow from; "
              "empty = peak seeds everywhere")
        i["seeds"].setPlaceholderText("peak seeds")
        i.add("segment_threshold", dspin(0.6, 0.01, 0.99, 0.05, 2), "Object threshold",
              "probability that becomes object")
        i.add("move_threshold", dspin(0.9, 0.01, 0.99, 0.05, 2), "Move threshold",
              "probability the FOV moves at")
        i.add("min_segment_size", spin(1000, 0, 10**9), "Smallest object (voxels)")
        i.add("concurrency", auto_spin(spin(0, 0, 1024)), "Objects side by side",
              "grown together, one batch per network call; same result as one at a time "
              "(auto: 1 on a CPU, 8 on a GPU)")
        i.add("precision", combo(list(PRECISIONS)), "Precision")
        i.add("paint", check(False), "Paint into VAST",
              "also paint the objects into a new segmentation layer of the connected VAST")
        i.add("layer_name", QLineEdit("membrane-py ffn"), "New layer name")
        ia = Form()
        ia.add("mask", PathEdit("file", placeholder="optional"), "Mask volume",
               "its non-zero voxels get no FOV and no seed")
        ia.add("init_activation", dspin(0.95, 0.01, 0.99, 0.01, 2), "Seed activation")
        ia.add("pad_value", dspin(0.05, 0.01, 0.99, 0.01, 2), "Canvas pad value")
        ia.add("min_boundary_dist", QLineEdit("1,1,1"), "No seed this near an object (z,y,x)")
        ia.add("freeze", check(True), "Disconnected-voxel freezing")
        ia.add("subvolume", QLineEdit(), "Subvolume core (z,y,x)",
               "segment in pieces of this size (less memory); empty = the box at once")
        ia.add("overlap", QLineEdit("32,32,32"), "Subvolume context (z,y,x)")
        ia.add("channels_last", check(True), "Channels-last activations")
        ia.add("device", combo(["auto", "cpu", "cuda"]), "Device")
        ia.add("colors", combo(list(COLORINGS)), "Tile colours",
               "tiles: ids (R*65536+G*256+B) or a palette")
        ia.add("image_mean", QLineEdit(), "Normalisation mean", "empty = the checkpoint's")
        ia.add("image_stddev", QLineEdit(), "Normalisation stddev", "empty = the checkpoint's")
        geometry_fields(ia)
        for name in ("depth", "features", "fov", "deltas"):
            ia[name].setToolTip("geometry of a TensorFlow checkpoint (an FFN .pt knows its own)")

        self.m, self.p, self.pa, self.t, self.ta, self.i, self.ia = m, p, pa, t, ta, i, ia
        self.sections = {"prep": [p.parentWidget(), self.add_fold(pa, "Advanced")],
                         "train": [t.parentWidget(), self.add_fold(ta, "Advanced")],
                         "infer": [i.parentWidget(), self.add_fold(ia, "Advanced")]}
        # the fold of each step follows its group box
        for box, fold in self.sections.values():
            self.column.removeWidget(fold)
            self.column.insertWidget(self.column.indexOf(box) + 1, fold)
        m["mode"].currentIndexChanged.connect(self._show_mode)
        i["paint"].toggled.connect(self._show_mode)
        for key, pairs in LAYER_ROWS.items():
            for volume, _ in pairs:
                getattr(self, key)[volume].textChanged.connect(self._show_mode)

        self.plot = CurvePlot("FFN training loss", "step")
        self.loss_curve = self.plot.add_curve("loss", "training loss (steps)", "#90a4ae", 1)
        self.mean_curve = self.plot.add_curve("mean", f"mean of {MEAN_OF} steps", "#1565c0")
        self.preview_layout.addWidget(self.plot, 1)
        self.points = self.plot.points
        self._show_mode()
        self.load_settings()

    @property
    def mode(self) -> str:
        return self.m.value("mode")

    def _show_mode(self) -> None:
        for mode, widgets in self.sections.items():
            for w in widgets:
                w.setVisible(mode == self.mode)
        self.plot.setVisible(self.mode == "train")
        self.i.set_row_visible("layer_name", self.i.value("paint"))
        for key, pairs in LAYER_ROWS.items():
            form = getattr(self, key)
            for volume, layer in pairs:
                form.set_row_visible(layer, not form.value(volume))
        self.run_button.setText({"prep": "Prepare coordinates", "train": "Train FFN",
                                 "infer": "Segment"}[self.mode])
        self.revalidate()

    def set_vast(self, state) -> None:
        """Fill the layer lists from the Connect tab."""
        self.vast = state
        for form in (self.t, self.i):
            fill_layers(form["image_layer"], state.layers, None)
        for form in (self.p, self.t):
            fill_layers(form["labels_layer"], state.layers, ("VAST's selected one", SELECTED))
        self.revalidate()

    def _address(self) -> str:
        return self.vast.address if self.vast is not None and self.vast.connected else ""

    def problem(self) -> str | None:
        address = self._address()
        if self.mode == "prep":
            msg = volume_problem(self.p.value("labels"), "label volume", address)
            if msg is None and not self.p.value("output"):
                msg = "choose the coordinates file to write (.npz)"
            return msg
        if self.mode == "train":
            t = self.t
            msg = (volume_problem(t.value("image"), "image volume", address)
                   or volume_problem(t.value("labels"), "label volume", address)
                   or need_file(t.value("coordinates"), "coordinates file", (".npz",)))
            if msg is None and not t.value("output").endswith(".pt"):
                msg = "choose the network file to write (.pt)"
            return msg
        i = self.i
        msg = (volume_problem(i.value("image"), "image volume", address)
               or need_file(i.value("checkpoint"), "network", (".pt", ".index")))
        if msg is None and not i.value("output"):
            msg = "choose where to write the objects (.zarr, .tif, .npz or a folder)"
        if msg is None and self.ia.value("mask"):
            msg = volume_problem(self.ia.value("mask"), "mask volume", "")
        if msg is None and i.value("paint") and not address:
            msg = "'paint into VAST' needs a connected VAST: connect, or untick it"
        return msg

    def _layer(self, form: Form, name: str) -> int | None:
        value = form[name].currentData()
        return None if value is None or value == SELECTED else int(value)

    def build_spec(self):
        return {"prep": self._prep_spec, "train": self._train_spec,
                "infer": self._infer_spec}[self.mode]()

    def _prep_spec(self):
        from membrane_py.ffn.prep import THRESHOLDS, FFNPrepJob
        from membrane_py.geometry import parse_floats

        p, pa = self.p, self.pa
        thresholds = pa.value("thresholds")
        return FFNPrepJob(
            labels=p.value("labels") or self._address(), output=p.value("output"),
            labels_layer=self._layer(p, "labels_layer") if not p.value("labels") else None,
            box=optional_box(p.value("box")), mip=p.value("mip"),
            radius=zyx(pa.value("radius"), "radius"), margin=zyx(pa.value("margin"), "margin"),
            thresholds=parse_floats(thresholds, "thresholds") if thresholds
            else list(THRESHOLDS), min_size=p.value("min_size"),
            max_per_partition=pa.value("max_per_partition"), seed=pa.value("seed"))

    def _train_spec(self):
        from membrane_py.ffn.train import FFNTrainJob

        t, ta = self.t, self.ta
        return FFNTrainJob(
            image=t.value("image") or self._address(), labels=t.value("labels")
            or self._address(), coordinates=t.value("coordinates"), output=t.value("output"),
            image_layer=(self._layer(t, "image_layer") or 0) if not t.value("image") else 0,
            labels_layer=self._layer(t, "labels_layer") if not t.value("labels") else None,
            model=model_of(ta), image_mean=optional_float(ta.value("image_mean"), "mean"),
            image_stddev=optional_float(ta.value("image_stddev"), "stddev"),
            steps=t.value("steps"), batch_size=t.value("batch_size"),
            optimizer=t.value("optimizer"), learning_rate=t.value("learning_rate"),
            momentum=ta.value("momentum"), clip=ta.value("clip"),
            checkpoint_every=ta.value("checkpoint_every"), resume=ta.value("resume"),
            device=ta.value("device"), seed=ta.value("seed"))

    def _infer_spec(self):
        from membrane_py.ffn.canvas import FloodOptions
        from membrane_py.ffn.infer import FFNInferJob

        i, ia = self.i, self.ia
        options = FloodOptions(
            init_activation=ia.value("init_activation"), pad_value=ia.value("pad_value"),
            move_threshold=i.value("move_threshold"),
            segment_threshold=i.value("segment_threshold"),
            min_segment_size=i.value("min_segment_size"),
            min_boundary_dist=zyx(ia.value("min_boundary_dist"), "seed distance"),
            disco_seed_threshold=0.0 if ia.value("freeze") else None)
        geometry = (ia.value("depth"), ia.value("features"), ia.value("fov"),
                    ia.value("deltas"))
        subvolume = ia.value("subvolume")
        return FFNInferJob(
            image=i.value("image") or self._address(), checkpoint=i.value("checkpoint"),
            output=i.value("output"),
            image_layer=(self._layer(i, "image_layer") or 0) if not i.value("image") else 0,
            box=optional_box(i.value("box")), mip=i.value("mip"),
            seeds=seed_points(i.value("seeds")), mask=ia.value("mask") or None,
            options=options, model=None if geometry == REFERENCE else model_of(ia),
            image_mean=optional_float(ia.value("image_mean"), "mean"),
            image_stddev=optional_float(ia.value("image_stddev"), "stddev"),
            concurrency=i.value("concurrency"),
            subvolume=zyx(subvolume, "subvolume") if subvolume else None,
            overlap=zyx(ia.value("overlap"), "overlap"), precision=i.value("precision"),
            channels_last=ia.value("channels_last"), device=ia.value("device"),
            colors=ia.value("colors"), paint=self._address() if i.value("paint") else "",
            layer_name=i.value("layer_name"))

    def job_started(self, spec) -> None:
        self.plot.clear_points()

    def handle_event(self, event: Event) -> None:
        if event.kind == "metric" and event.task == "ffn-train" and "loss" in event.data:
            self.plot.append("loss", event.done, event.data["loss"])
            recent = [y for _, y in self.points["loss"][-MEAN_OF:]]
            self.plot.append("mean", event.done, sum(recent) / len(recent))
