"""The region fields Predict and Paint share: whole volume, a box, or cubes around the
view, skeleton anchors or skeleton nodes (mip-0 voxels, VAST's coordinate order)."""

from __future__ import annotations

from PySide6.QtWidgets import QLineEdit

from membrane_py.tabs.widgets import Form, combo, spin

REGION_CHOICES = [("whole volume", "volume"), ("a box", "box"),
                  ("a cube around VAST's current view", "view"),
                  ("cubes around skeleton anchor points", "anchors"),
                  ("cubes around skeleton nodes", "nodes")]
SELECTED = -1  # the annotation layer selected in VAST


def add_region_fields(form: Form) -> None:
    """Add ``region``, ``box``, ``size_xy`` and ``depth`` rows to ``form``."""
    form.add("region", combo(REGION_CHOICES), "Region")
    form.add("box", QLineEdit(), "Box (mip 0)",
             "minx,maxx,miny,maxy,minz,maxz as VAST shows coordinates (inclusive)")
    form["box"].setPlaceholderText("minx,maxx,miny,maxy,minz,maxz")
    form.add("size_xy", spin(2048, 16, 1 << 20, 256, " px"), "Cube width (mip 0)")
    form.add("depth", spin(16, 1, 1 << 16, 1), "Cube depth (sections)")
    form.add("anno_layer", combo([("VAST's selected one", SELECTED)]), "Skeleton layer",
             "the annotation layer whose skeletons give the anchor points or nodes")
    form["region"].currentIndexChanged.connect(lambda *_: show_region_rows(form))
    show_region_rows(form)


def show_region_rows(form: Form) -> None:
    mode = form.value("region")
    form.set_row_visible("box", mode == "box")
    form.set_row_visible("size_xy", mode in ("view", "anchors", "nodes"))
    form.set_row_visible("depth", mode in ("view", "anchors", "nodes"))
    form.set_row_visible("anno_layer", mode in ("anchors", "nodes"))


def fill_layers(box, layers: list[tuple[int, str, int]], first: tuple[str, int] | None) -> None:
    """Refill a layer combo with VAST's ``(nr, name, type)`` layers after an optional first
    entry, keeping the chosen layer when it is still there: found by name, since a layer
    added or removed in VAST renumbers the ones after it (the same number would then name
    another layer)."""
    current, text = box.currentData(), box.currentText()
    box.blockSignals(True)
    box.clear()
    if first is not None:
        box.addItem(*first)
    for nr, name, _ in layers:
        box.addItem(f"{nr}: {name}", nr)
    name = text.split(": ", 1)[-1]
    named = [i for i in range(first is not None, box.count())
             if box.itemText(i).split(": ", 1)[-1] == name]
    # the same name, at its old number when VAST holds that name twice; else the first entry
    index = next((i for i in named if box.itemData(i) == current), named[0] if named else 0)
    box.setCurrentIndex(index)
    box.blockSignals(False)


def set_region_layers(form: Form, layers: list[tuple[int, str, int]]) -> None:
    fill_layers(form["anno_layer"], layers, ("VAST's selected one", SELECTED))


def region_spec(form: Form):
    """The :class:`~membrane_py.predict.job.RegionSpec` of the fields (ValueError says what
    to fix)."""
    from membrane_py.geometry import parse_ints
    from membrane_py.predict.job import RegionSpec

    mode = form.value("region")
    box = None
    if mode == "box":
        text = form.value("box")
        if not text:
            raise ValueError("type the box as minx,maxx,miny,maxy,minz,maxz (mip 0)")
        box = parse_ints(text, 6, "box")
    anno = form.value("anno_layer")
    return RegionSpec(mode=mode, box=box, size_xy=form.value("size_xy"),
                      depth=form.value("depth"), anno_layer=None if anno == SELECTED else anno)
