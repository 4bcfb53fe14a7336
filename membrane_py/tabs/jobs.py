"""Jobs tab: every job the worker knows (queued, running, finished), its log, and cancel."""

from __future__ import annotations

from collections import deque

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from membrane_py.events import Event

COLUMNS = ("job", "kind", "state", "progress", "last message")
#: Log lines kept per job in the window (the worker keeps every event).
LOG_LINES = 2000


def describe(event: Event) -> str:
    """One log line for an event."""
    if event.kind == "progress":
        return f"[{event.task}] {event.done}/{event.total} {event.message}".rstrip()
    if event.kind == "metric":
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in event.data.items())
        return f"[{event.task}] {event.message}: {values}"
    if event.kind == "artifact":
        return f"[{event.task}] wrote {event.message}: {event.data.get('path', '')}"
    return f"{event.kind}: {event.message}"


class JobsTab(QWidget):
    title = "Jobs"

    def __init__(self, controller, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.rows: dict[str, int] = {}
        self.logs: dict[str, deque[str]] = {}
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("jobs")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setObjectName("log")
        self.cancel_button = QPushButton("Cancel selected job")
        self.refresh_button = QPushButton("Refresh")
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.log)
        lay = QVBoxLayout(self)
        lay.addLayout(buttons)
        lay.addWidget(split)
        controller.submitted.connect(self._on_submitted)
        controller.event.connect(self._on_event)
        controller.finished.connect(self._on_finished)
        self.table.itemSelectionChanged.connect(self._show_log)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.refresh_button.clicked.connect(self.refresh)

    def _on_submitted(self, job_id: str, kind: str) -> None:
        self._row(job_id, kind, "queued")

    def _row(self, job_id: str, kind: str, state: str) -> int:
        if job_id not in self.rows:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self.rows[job_id] = row
            self.logs[job_id] = deque(maxlen=LOG_LINES)
            for col, text in enumerate((job_id, kind, state, "", "")):
                self.table.setItem(row, col, QTableWidgetItem(text))
        return self.rows[job_id]

    def _set(self, job_id: str, col: int, text: str) -> None:
        self.table.item(self.rows[job_id], col).setText(text)

    def state(self, job_id: str) -> str:
        return self.table.item(self.rows[job_id], 2).text() if job_id in self.rows else ""

    def _on_event(self, job_id: str, event: Event) -> None:
        self._row(job_id, "", "running")
        if self.state(job_id) == "queued":
            self._set(job_id, 2, "running")
        line = describe(event)
        self.logs[job_id].append(line)
        if event.kind == "progress" and event.total:
            self._set(job_id, 3, f"{100 * event.done / event.total:.0f} %")
        if event.kind in ("progress", "log", "warning", "error"):
            self._set(job_id, 4, line)
        if self.selected() == job_id:
            self.log.appendPlainText(line)

    def _on_finished(self, job_id: str, info) -> None:
        self._row(job_id, info.kind, info.state)
        self._set(job_id, 2, info.state)
        if info.error:
            self._set(job_id, 4, info.error)
            self.logs[job_id].append(f"error: {info.error}")

    def selected(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.table.item(rows[0].row(), 0).text()

    def _show_log(self) -> None:
        job_id = self.selected()
        self.log.setPlainText("\n".join(self.logs.get(job_id, ())))

    def cancel_selected(self) -> None:
        job_id = self.selected()
        if job_id is not None and self.state(job_id) in ("queued", "running"):
            self.controller.cancel(job_id)

    def refresh(self) -> None:
        """Add the worker's jobs this window did not submit (e.g. from `membrane jobs`)."""
        for info in self.controller.jobs():
            new = info.id not in self.rows
            self._row(info.id, info.kind, info.state)
            self._set(info.id, 1, info.kind)
            self._set(info.id, 2, info.state)
            if new:
                self.logs[info.id].extend(describe(e) for e in
                                          self.controller.past_events(info.id))
        self._show_log()
