"""The job side of a tab: a panel with progress bar, ETA, throughput and cancel, and the
base of the tabs that validate their inputs, submit a job spec and render its events."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from membrane_py.events import Event
from membrane_py.tabs.widgets import ERROR_STYLE, OK_STYLE, Fold, Form


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` for an ETA; ``?`` when unknown."""
    if not np.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class JobPanel(QWidget):
    """Progress bar, ETA and throughput, cancel button and a one-line status of one job."""

    cancel_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job_id: str | None = None
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.eta = QLabel("", self)
        self.cancel = QPushButton("Cancel", self)
        self.cancel.setEnabled(False)
        self.cancel.setToolTip("stop this job at its next check (Esc)")
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top = QHBoxLayout()
        top.addWidget(self.bar, 1)
        top.addWidget(self.eta)
        top.addWidget(self.cancel)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.status)
        self.cancel.clicked.connect(self._cancel)
        self._start: dict[str, tuple[float, int]] = {}
        self.rate = float("nan")

    @property
    def running(self) -> bool:
        return self.job_id is not None

    def start(self, job_id: str) -> None:
        self.job_id = job_id
        self._start.clear()
        self.rate = float("nan")
        self.bar.setRange(0, 0)  # busy until the first progress event
        self.eta.setText("queued")
        self.cancel.setEnabled(True)
        self.set_status(f"job {job_id} submitted", ok=True)

    def _cancel(self) -> None:
        if self.job_id is not None:
            self.cancel.setEnabled(False)
            self.eta.setText("cancelling…")
            self.cancel_requested.emit(self.job_id)

    def set_status(self, text: str, ok: bool = True) -> None:
        self.status.setStyleSheet(OK_STYLE if ok else ERROR_STYLE)
        self.status.setText(text)

    def on_progress(self, event: Event) -> None:
        """Bar, throughput and ETA from a progress event (the job's own ETA when it sends one)."""
        now = time.monotonic()
        total = max(event.total, 1)
        self.bar.setRange(0, total)
        self.bar.setValue(min(event.done, total))
        t0, d0 = self._start.setdefault(event.task, (now, event.done))
        elapsed, done = now - t0, event.done - d0
        self.rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        eta = event.data.get("eta_s")
        if not isinstance(eta, int | float):
            eta = (event.total - event.done) / self.rate if self.rate > 0 else float("nan")
        speed = f"{self.rate:.2f}/s" if np.isfinite(self.rate) else ""
        if isinstance(event.data.get("mb_s"), int | float):
            speed = f"{speed}, {event.data['mb_s']:.1f} MB/s"
        self.eta.setText(f"{event.done}/{event.total}  {speed}  ETA {clock(eta)}".strip())
        if event.message:
            self.set_status(f"{event.task}: {event.message}", ok=True)

    def finish(self, state: str, message: str) -> None:
        """The job ended: ``done``, ``failed`` or ``cancelled``."""
        self.job_id = None
        self.cancel.setEnabled(False)
        if state == "done":
            self.bar.setRange(0, 1)
            self.bar.setValue(1)
            self.eta.setText("done")
        else:
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.eta.setText(state)
        self.set_status(message, ok=state == "done")


class JobTab(QWidget):
    """Base of the tabs that run a job: a form column (scrolls at small window sizes) with a
    Run button that stays disabled until :meth:`problem` is None and the spec builds, a
    one-line message saying what to fix, and a :class:`JobPanel`; a preview column."""

    title = ""
    group = ""
    run_text = "Run"

    def __init__(self, controller, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.settings = settings
        self.forms: list[Form] = []
        self.message = QLabel("", self)
        self.message.setWordWrap(True)
        self.message.setObjectName("message")
        self.run_button = QPushButton(self.run_text, self)
        self.run_button.setObjectName("run")
        self.run_button.setToolTip("start the job (Ctrl+Return)")
        self.reset_button = QPushButton("Reset", self)
        self.reset_button.setToolTip("every field back to its default")
        self.panel = JobPanel(self)
        self.last_spec = None  # the spec of the latest run
        self.column = QVBoxLayout()
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.reset_button)
        buttons.addStretch(1)
        self._left = QWidget()
        left_layout = QVBoxLayout(self._left)
        left_layout.addLayout(self.column)
        left_layout.addLayout(buttons)
        left_layout.addWidget(self.message)
        left_layout.addWidget(self.panel)
        left_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self._left)
        scroll.setMinimumWidth(400)
        self.preview = QWidget()
        self.preview_layout = QVBoxLayout(self.preview)
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.addWidget(scroll)
        split.addWidget(self.preview)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([440, 900])
        outer = QVBoxLayout(self)
        outer.addWidget(split)
        self.run_button.clicked.connect(self.run)
        self.reset_button.clicked.connect(self.reset)
        self.panel.cancel_requested.connect(self._cancel)
        controller.event.connect(self._on_event)
        controller.finished.connect(self._on_finished)
        controller.availability.connect(self._worker_changed)

    def add_form(self, form: Form, title: str = "") -> Form:
        self.forms.append(form)
        if title:
            box = QGroupBox(title)
            QVBoxLayout(box).addWidget(form)
            self.column.addWidget(box)
        else:
            self.column.addWidget(form)
        form.changed.connect(self.revalidate)
        return form

    def add_fold(self, form: Form, title: str = "Advanced") -> Fold:
        self.forms.append(form)
        fold = Fold(title, form)
        self.column.addWidget(fold)
        form.changed.connect(self.revalidate)
        return fold

    # -- what subclasses write -----------------------------------------------------------------

    def problem(self) -> str | None:
        """What the user must fix before the job can run (one line), else None."""
        return None

    def build_spec(self):
        """The job spec of the current inputs (may raise ValueError with a message)."""
        raise NotImplementedError

    def handle_event(self, event: Event) -> None:
        """Tab-specific rendering of this tab's job events (plots, previews)."""

    def handle_finished(self, info) -> None:
        """Tab-specific rendering of this tab's finished job (tables, result pictures)."""

    # -- shared behaviour ----------------------------------------------------------------------

    def validation_message(self) -> str | None:
        msg = self.problem()
        if msg is None:
            try:
                self.build_spec()
            except ValueError as exc:  # SpecError too: the spec's own checks say what to fix
                msg = str(exc).splitlines()[0]
        return msg

    def revalidate(self) -> None:
        msg = self.validation_message()
        if msg is None and not self.controller.available:
            msg = "the job worker is not running; see the status bar"
        self.message.setStyleSheet(ERROR_STYLE if msg else OK_STYLE)
        self.message.setText(msg or "ready")
        self.run_button.setEnabled(msg is None and not self.panel.running)

    def run(self) -> None:
        if not self.run_button.isEnabled():
            return
        spec = self.build_spec()
        self.save_settings()
        self.last_spec = spec
        job_id = self.controller.submit(spec)
        if job_id is None:
            self.panel.finish("failed", self.controller.last_error)
        else:
            self.panel.start(job_id)
            self.job_started(spec)
        self.revalidate()

    def job_started(self, spec) -> None:
        """Hook: a job of this tab was submitted (clear plots, remember outputs)."""

    def interrupted(self, resumed) -> None:
        """Hook: this tab's job failed or was cancelled; ``resumed`` is the spec that would
        continue it (:meth:`~membrane_py.jobs.spec.JobSpec.resumed`)."""

    def _worker_changed(self, ok: bool, message: str) -> None:
        self.revalidate()

    def _cancel(self, job_id: str) -> None:
        self.controller.cancel(job_id)

    def _on_event(self, job_id: str, event: Event) -> None:
        if job_id != self.panel.job_id:
            return
        if event.kind == "progress":
            self.panel.on_progress(event)
        elif event.kind == "warning":
            self.panel.set_status(f"warning: {event.message}", ok=False)
        self.handle_event(event)

    def _on_finished(self, job_id: str, info) -> None:
        if job_id != self.panel.job_id:
            return
        if info.state == "done":
            text = self.controller.summaries.get(job_id) or "done"
        elif info.state == "cancelled":
            text = "cancelled"
        else:
            text = info.error or "the job failed"
        self.panel.finish(info.state, text)
        if info.state in ("failed", "cancelled") and self.last_spec is not None:
            self.interrupted(self.last_spec.resumed())
        self.handle_finished(info)
        self.revalidate()

    def reset(self) -> None:
        for form in self.forms:
            form.reset()

    def save_settings(self) -> None:
        for i, form in enumerate(self.forms):
            form.save(self.settings, f"{self.group}/{i}")

    def load_settings(self) -> None:
        for i, form in enumerate(self.forms):
            form.load(self.settings, f"{self.group}/{i}")
        self.revalidate()
