"""The main window: one tab per workflow step, a status bar for the worker and VAST,
keyboard shortcuts, and settings that persist between sessions (QSettings)."""

from __future__ import annotations

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import QLabel, QMainWindow, QTabWidget

from membrane_py.tabs.connect import ConnectTab, VastState
from membrane_py.tabs.evaluate import EvaluateTab
from membrane_py.tabs.ffn import FFNTab
from membrane_py.tabs.groundtruth import GroundTruthTab
from membrane_py.tabs.job_tab import JobTab
from membrane_py.tabs.jobs import JobsTab
from membrane_py.tabs.jobs_controller import JobController
from membrane_py.tabs.paint import PaintTab
from membrane_py.tabs.patches import PatchesTab
from membrane_py.tabs.predict import PredictTab
from membrane_py.tabs.suggest import SuggestTab
from membrane_py.tabs.train import TrainTab

#: The window's first size; it stays usable down to MINIMUM (a 1366 x 768 laptop screen).
START_SIZE = (1280, 740)
MINIMUM = (960, 600)


class MainWindow(QMainWindow):
    """membrane-py's window. ``settings``: where fields persist (tests pass a temporary ini)."""

    def __init__(self, controller: JobController, settings: QSettings | None = None,
                 auto_connect: bool = False) -> None:
        super().__init__()
        self.controller = controller
        self.settings = settings or QSettings("membrane-py", "membrane-py")
        self.setWindowTitle("membrane-py")
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        self.setCentralWidget(self.tabs)
        self.connect_tab = ConnectTab(self.settings)
        s = self.settings
        self.gt_tab = GroundTruthTab(controller, s)
        self.patches_tab = PatchesTab(controller, s)
        self.train_tab = TrainTab(controller, s)
        self.evaluate_tab = EvaluateTab(controller, s)
        self.predict_tab = PredictTab(controller, s)
        self.suggest_tab = SuggestTab(controller, s)
        self.paint_tab = PaintTab(controller, s)
        self.ffn_tab = FFNTab(controller, s)
        self.jobs_tab = JobsTab(controller)
        self.job_tabs: list[JobTab] = [self.gt_tab, self.patches_tab, self.train_tab,
                                       self.evaluate_tab, self.predict_tab, self.suggest_tab,
                                       self.paint_tab, self.ffn_tab]
        for tab in (self.connect_tab, *self.job_tabs, self.jobs_tab):
            self.tabs.addTab(tab, tab.title)
        self.connect_tab.connected.connect(self._vast_changed)
        controller.finished.connect(self._job_finished)
        self.connect_tab.load_settings()
        self._vast_changed(VastState())

        self.worker_label = QLabel()
        self.vast_label = QLabel("VAST: not connected")
        self.statusBar().addWidget(self.vast_label, 1)
        self.statusBar().addPermanentWidget(self.worker_label)
        controller.availability.connect(self._worker_changed)
        self._worker_changed(controller.available, controller.last_error or "")
        self._shortcuts()
        self._restore_geometry()
        if auto_connect:
            QTimer.singleShot(0, self.connect_tab.connect_vast)

    def _shortcuts(self) -> None:
        for i in range(min(self.tabs.count(), 10)):  # Ctrl+1 ... Ctrl+9, Ctrl+0 the tenth
            QShortcut(QKeySequence(f"Ctrl+{(i + 1) % 10}"), self,
                      activated=lambda i=i: self.tabs.setCurrentIndex(i))
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.run_current)
        QShortcut(QKeySequence("Escape"), self, activated=self.cancel_current)
        QShortcut(QKeySequence.StandardKey.Quit, self, activated=self.close)

    def current_job_tab(self) -> JobTab | None:
        tab = self.tabs.currentWidget()
        return tab if isinstance(tab, JobTab) else None

    def run_current(self) -> None:
        tab = self.current_job_tab()
        if tab is not None:
            tab.run()
        elif self.tabs.currentWidget() is self.connect_tab:
            self.connect_tab.connect_vast()

    def cancel_current(self) -> None:
        tab = self.current_job_tab()
        if tab is not None and tab.panel.job_id is not None:
            tab.panel._cancel()

    def _job_finished(self, _job_id: str, _info) -> None:
        """Re-read VAST's layers after a job: loading a prediction, sending suggestions or
        painting into a new layer adds a layer and renumbers those after it."""
        if self.connect_tab.state.connected:
            self.connect_tab.connect_vast()

    def _vast_changed(self, state: VastState) -> None:
        self.predict_tab.set_vast(state)
        self.suggest_tab.set_vast(state)
        self.paint_tab.set_vast(state)
        self.ffn_tab.set_vast(state)
        if hasattr(self, "vast_label"):
            self.vast_label.setText(f"VAST: {state.address}" if state.connected
                                    else "VAST: not connected")

    def _worker_changed(self, ok: bool, message: str) -> None:
        text = "worker: running" if ok and self.controller.available else "worker: not running"
        if message:
            text = f"{text} ({message})"
        self.worker_label.setText(text)
        self.worker_label.setStyleSheet("" if ok else "color: #b00020;")

    def _restore_geometry(self) -> None:
        self.setMinimumSize(*MINIMUM)
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            screen = QGuiApplication.primaryScreen()
            avail = screen.availableGeometry() if screen is not None else None
            w, h = START_SIZE
            if avail is not None:
                w, h = min(w, avail.width()), min(h, avail.height())
            self.resize(w, h)
        self.tabs.setCurrentIndex(int(self.settings.value("window/tab", 0)))

    def save_settings(self) -> None:
        self.connect_tab.save_settings()
        for tab in self.job_tabs:
            tab.save_settings()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/tab", self.tabs.currentIndex())
        self.settings.sync()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.save_settings()
        self.connect_tab.stop_server()
        super().closeEvent(event)
