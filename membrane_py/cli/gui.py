"""`membrane gui`: the tabbed window, with its own job worker process."""

from __future__ import annotations

import typer


def gui(
    vast: str = typer.Option(None, help="VAST address to connect to at start, e.g. "
                             "vast://127.0.0.1:22081 (default: the last one used)"),
    serve: str = typer.Option(None, help="start a bundled VAST-protocol server on this volume "
                              "('synthetic[:ZxYxX]', a folder, .tif, .h5, .zarr, .vsvi) and "
                              "connect to it; for users without VAST"),
    worker: str = typer.Option(None, help="use this running worker (its state folder, address "
                               "file or tcp:// URL); default: the `membrane worker` running "
                               "at the default state folder, else a new one"),
    settings: str = typer.Option(None, help="settings file (.ini) instead of the user's "
                                 "default"),
) -> None:
    """Open the window: Connect, Ground truth, Patches, Train, Evaluate, Predict, Paint, Jobs."""
    import sys

    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from membrane_py.jobs.channel import default_state_dir
    from membrane_py.jobs.client import WorkerClient
    from membrane_py.tabs.jobs_controller import JobController
    from membrane_py.tabs.main_window import MainWindow

    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("membrane-py")
    app.setOrganizationName("membrane-py")
    store = (QSettings(settings, QSettings.Format.IniFormat) if settings
             else QSettings("membrane-py", "membrane-py"))
    try:  # a worker named on the command line, else one already running at the default place
        controller = JobController(WorkerClient.connect(worker or default_state_dir()))
    except (OSError, ValueError) as exc:
        if worker:
            typer.echo(f"membrane gui: error: cannot reach the worker at {worker}: {exc}",
                       err=True)
            raise typer.Exit(2) from exc
        controller = JobController.start_local()
    window = MainWindow(controller, store, auto_connect=not serve)
    if vast:
        window.connect_tab.address.setText(vast)
    if serve:
        window.connect_tab.volume.setText(serve)
        window.connect_tab.start_server()
    window.show()
    try:
        code = app.exec()
    finally:
        window.connect_tab.stop_server()
        controller.close()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this module's command to the `membrane` app."""
    app.command()(gui)
