"""Small widgets every tab shares: path fields, a persisted form, image views, the job panel
(progress bar, ETA, cancel) and the tab base that validates inputs and submits a job spec."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

#: Style of the one-line messages under each form.
ERROR_STYLE = "color: #b00020;"
OK_STYLE = "color: #1b5e20;"


class PathEdit(QWidget):
    """A line edit with a browse button. ``mode``: ``dir`` (an existing folder), ``file``
    (an existing file), ``out`` (a folder that may not exist yet) or ``save`` (a file to
    write)."""

    textChanged = Signal(str)

    def __init__(self, mode: str = "dir", filter: str = "", placeholder: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode, self.filter = mode, filter
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(placeholder)
        self.button = QToolButton(self)
        self.button.setText("…")
        self.button.setToolTip("browse")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)
        self.edit.textChanged.connect(self.textChanged)
        self.button.clicked.connect(self.browse)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(text)

    def browse(self) -> None:
        start = self.text() or str(Path.home())
        if self.mode in ("dir", "out"):
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        elif self.mode == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self.filter)
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Save as", start, self.filter)
        if path:
            self.setText(path)


def get_value(widget: QWidget) -> Any:
    """The value of a form widget (check box, spin boxes, combo data or text, text fields)."""
    if isinstance(widget, QCheckBox | QGroupBox):
        return widget.isChecked()
    if isinstance(widget, QSpinBox | QDoubleSpinBox):
        return widget.value()
    if isinstance(widget, QComboBox):
        data = widget.currentData()
        return data if data is not None else widget.currentText()
    return widget.text().strip()


def set_value(widget: QWidget, value: Any) -> None:
    """Show ``value`` (as stored by QSettings, so maybe a string) in a form widget."""
    if isinstance(widget, QCheckBox | QGroupBox):
        widget.setChecked(value in (True, "true", "1", 1))
    elif isinstance(widget, QSpinBox):
        widget.setValue(int(float(value)))
    elif isinstance(widget, QDoubleSpinBox):
        widget.setValue(float(value))
    elif isinstance(widget, QComboBox):
        index = widget.findData(value)
        if index < 0:
            index = widget.findText(str(value))
        if index >= 0:
            widget.setCurrentIndex(index)
    else:
        widget.setText(str(value))


def changed_signal(widget: QWidget):
    """The signal a widget emits when its value changes."""
    if isinstance(widget, QCheckBox):
        return widget.toggled
    if isinstance(widget, QGroupBox):
        return widget.toggled
    if isinstance(widget, QSpinBox | QDoubleSpinBox):
        return widget.valueChanged
    if isinstance(widget, QComboBox):
        return widget.currentIndexChanged
    return widget.textChanged


def spin(value: int, lo: int = 0, hi: int = 1_000_000, step: int = 1, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


def auto_spin(box: QAbstractSpinBox, text: str = "auto") -> QAbstractSpinBox:
    """``box`` showing ``text`` at its minimum (0), which the tab passes on as None."""
    box.setSpecialValueText(text)
    return box


def dspin(value: float, lo: float = 0.0, hi: float = 1e6, step: float = 0.1,
          decimals: int = 3) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def combo(items: list[tuple[str, Any]] | list[str], current: Any = None) -> QComboBox:
    """A combo box of (label, value) pairs (or plain strings)."""
    box = QComboBox()
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(12)
    for item in items:
        label, data = item if isinstance(item, tuple) else (item, item)
        box.addItem(label, data)
    if current is not None:
        set_value(box, current)
    return box


def check(checked: bool, text: str = "") -> QCheckBox:
    box = QCheckBox(text)
    box.setChecked(checked)
    return box


class Form(QWidget):
    """Named fields in a QFormLayout; values persist in QSettings under ``group``."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layout_ = QFormLayout(self)
        self.layout_.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.fields: dict[str, QWidget] = {}
        self.defaults: dict[str, Any] = {}

    def add(self, name: str, widget: QWidget, label: str, tip: str = "") -> QWidget:
        widget.setObjectName(name)
        if tip:
            widget.setToolTip(tip)
        self.fields[name] = widget
        self.defaults[name] = get_value(widget)
        self.layout_.addRow(label, widget)
        changed_signal(widget).connect(lambda *_: self.changed.emit())
        return widget

    def __getitem__(self, name: str) -> QWidget:
        return self.fields[name]

    def value(self, name: str) -> Any:
        return get_value(self.fields[name])

    def set_row_visible(self, name: str, visible: bool) -> None:
        self.layout_.setRowVisible(self.fields[name], visible)

    def reset(self) -> None:
        """Every field back to its default (mEMbrain's Reset button)."""
        for name, default in self.defaults.items():
            set_value(self.fields[name], default)

    def save(self, settings: QSettings, group: str) -> None:
        settings.beginGroup(group)
        for name, widget in self.fields.items():
            settings.setValue(name, get_value(widget))
        settings.endGroup()

    def load(self, settings: QSettings, group: str) -> None:
        settings.beginGroup(group)
        for name, widget in self.fields.items():
            if settings.contains(name):
                # a stale or hand-edited setting keeps the default
                with contextlib.suppress(TypeError, ValueError):
                    set_value(widget, settings.value(name))
        settings.endGroup()


def to_qimage(image: np.ndarray) -> QImage:
    """An 8-bit gray (y, x) or RGB (y, x, 3) array as a QImage that owns a copy."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8:
        lo, hi = float(image.min(initial=0)), float(image.max(initial=0))
        image = ((image - lo) * (255.0 / (hi - lo or 1.0))).astype(np.uint8)
    h, w = image.shape[:2]
    if image.ndim == 2:
        return QImage(image.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
    if image.shape[2] == 4:
        image = np.ascontiguousarray(image[..., :3])
    return QImage(image.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ImageView(QLabel):
    """Shows one picture scaled to fit, with a caption when empty."""

    def __init__(self, caption: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.caption = caption
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setStyleSheet("background: #202020; color: #c0c0c0;")
        self._pixmap: QPixmap | None = None
        self.clear_image()

    def clear_image(self) -> None:
        self._pixmap = None
        self.setPixmap(QPixmap())
        self.setText(self.caption)

    def show_array(self, image: np.ndarray | None) -> None:
        if image is None:
            self.clear_image()
            return
        self._pixmap = QPixmap.fromImage(to_qimage(image))
        self._rescale()

    def has_image(self) -> bool:
        return self._pixmap is not None

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is not None:
            self.setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.FastTransformation))


class CurvePlot(pg.PlotWidget):
    """A white plot of named curves fed point by point (loss curves from metric events)."""

    def __init__(self, title: str, x_label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent, title=title)
        self.setObjectName("loss_plot")
        self.setBackground("w")
        self.addLegend(offset=(-10, 10))  # top right, away from the falling curves
        self.setLabel("bottom", x_label)
        self.points: dict[str, list[tuple[float, float]]] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}

    def add_curve(self, key: str, name: str, color: str, width: int = 2,
                  symbol: str | None = None) -> pg.PlotDataItem:
        """A curve named ``name`` in the legend that :meth:`append` feeds under ``key``."""
        extra = {"symbol": symbol, "symbolSize": 6} if symbol else {}
        self.curves[key] = self.plot([], [], pen=pg.mkPen(color, width=width), name=name,
                                     **extra)
        self.points[key] = []
        return self.curves[key]

    def append(self, key: str, x: float, y: float) -> None:
        self.points[key].append((x, y))
        self.curves[key].setData([p[0] for p in self.points[key]],
                                 [p[1] for p in self.points[key]])

    def clear_points(self) -> None:
        for key, curve in self.curves.items():
            self.points[key].clear()
            curve.setData([], [])


def read_preview(path: str | Path) -> np.ndarray | None:
    """A picture file for a preview (PNG/TIFF via the project's readers), or None."""
    from membrane_py.volumes.stacks import read_image

    try:
        image = read_image(path)
    except (OSError, ValueError):
        return None
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        image = image[image.shape[0] // 2]  # a stack: its middle section
    return image


def stretch(image: np.ndarray) -> np.ndarray:
    """Contrast-stretched 8-bit copy, so small label values (1, 2) are visible."""
    image = image.astype(np.float32)
    lo, hi = float(image.min(initial=0)), float(image.max(initial=0))
    return ((image - lo) * (255.0 / (hi - lo or 1.0))).astype(np.uint8)


class Fold(QWidget):
    """A titled section that opens and closes (the "advanced" settings)."""

    def __init__(self, title: str, body: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton(self)
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.body = body
        body.setVisible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.toggle)
        lay.addWidget(body)
        self.toggle.toggled.connect(self.set_open)

    def set_open(self, open_: bool) -> None:
        self.toggle.setChecked(open_)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.body.setVisible(open_)


def need_dir(path: str, what: str) -> str | None:
    """The message for a missing or wrong input folder, else None."""
    if not path:
        return f"choose the {what}"
    if not Path(path).is_dir():
        return f"{what} {path} is not an existing folder: pick one with …"
    return None


def need_file(path: str, what: str, suffixes: tuple[str, ...] = ()) -> str | None:
    """The message for a missing or wrong input file, else None."""
    if not path:
        return f"choose the {what}"
    p = Path(path)
    if not p.is_file():
        return f"{what} {path} does not exist: pick an existing file with …"
    if suffixes and p.suffix.lower() not in suffixes:
        return f"{what} {p.name} must be a {' or '.join(suffixes)} file"
    return None


def need_out(path: str, what: str) -> str | None:
    """The message for an output folder that cannot be made, else None."""
    if not path:
        return f"choose the {what}"
    p = Path(path)
    if p.exists() and not p.is_dir():
        return f"{what} {path} is a file: choose a folder"
    parent = next((a for a in (p, *p.parents) if a.exists()), None)
    if parent is None or not parent.is_dir():
        return f"{what} {path} cannot be created: its parent is not a folder"
    return None


def listing(folder: str | Path, limit: int = 10_000) -> list[Path]:
    """Image files of a folder, sorted (bounded, for previews)."""
    from membrane_py.augment.labels import list_images

    try:
        return list_images(folder)[:limit]
    except (OSError, ValueError):
        return []

