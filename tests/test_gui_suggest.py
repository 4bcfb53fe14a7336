"""The Suggest tab: a suggest job through the real worker against the mock VAST server, the
ranked list in the table, and a double-click that moves the server's view to a suggestion."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from membrane_py.predict.suggest import read_suggestions  # noqa: E402
from membrane_py.tabs.jobs_controller import JobController  # noqa: E402
from membrane_py.tabs.main_window import MainWindow  # noqa: E402
from membrane_py.vastapi.client import VastClient  # noqa: E402
from tests.predict_support import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def controller(qapp, tmp_path_factory):
    ctl = JobController.start_local(state_dir=tmp_path_factory.mktemp("worker"))
    assert ctl.available, ctl.last_error
    yield ctl
    ctl.close()


def test_suggest_tab_lists_suggestions_and_jumps_vast_there(qtbot, controller, vast_server,
                                                            tmp_path):
    window = MainWindow(controller, QSettings(str(tmp_path / "gui.ini"),
                                              QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    connect = window.connect_tab
    connect.address.setText(f"vast://{vast_server.host}:{vast_server.port}")
    qtbot.mouseClick(connect.connect_button, Qt.MouseButton.LeftButton)
    assert connect.state.connected, connect.status.text()
    tab = window.suggest_tab
    window.tabs.setCurrentWidget(tab)
    qtbot.waitUntil(lambda: tab.f["layer"].count() > 0, timeout=10_000)
    assert "network" in tab.message.text()  # nothing chosen yet: says what is missing
    tab.f["checkpoint"].setText(str(tiny_checkpoint(tmp_path / "tiny.pt")))
    tab.f["tta"].setValue(1)
    tab.r["k"].setValue(3)
    tab.r["size"].setValue(64)
    tab.r["out"].setText(str(tmp_path / "out"))
    qtbot.waitUntil(tab.run_button.isEnabled, timeout=10_000)
    assert tab.build_spec().sample_power == 1.0  # sampled by default
    tab.r["sample"].setValue(0.0)
    assert tab.build_spec().sample_power is None  # "off": the most uncertain regions
    assert tab.build_spec().score == "uncertainty"
    tab.f["score"].setCurrentIndex(1)
    assert tab.build_spec().score == "instability" and not tab.f["tta"].isVisible()
    assert tab.build_spec().predict_job().uncertainty is False  # the probability is enough
    tab.f["score"].setCurrentIndex(0)
    assert tab.f["tta"].isVisible()
    # the Paint tab's source: the last layer, which the suggestions' new layer may renumber
    source = window.paint_tab.f["source_layer"]
    source.setCurrentIndex(source.count() - 1)
    chosen = source.currentText().split(": ", 1)[1]
    qtbot.mouseClick(tab.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not tab.panel.running, timeout=180_000)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    # the window re-read VAST's layers when the job finished; the choice follows its name
    with VastClient(port=vast_server.port) as client:
        names = client.get_layer_names()
    assert connect.layer_list.count() == len(names) and "membrane-py suggestions" in names
    assert source.currentText() == f"{names.index(chosen)}: {chosen}"
    assert source.currentData() == names.index(chosen)
    rows = read_suggestions(tmp_path / "out" / "suggestions.csv")
    assert tab.table.rowCount() == len(rows) == 3
    assert [int(tab.table.item(i, 0).text()) for i in range(3)] == [1, 2, 3]
    target = rows[2]
    rect = tab.table.visualItemRect(tab.table.item(2, 1))
    qtbot.mouseClick(tab.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(tab.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: "suggestion" in tab.jump_status.text(), timeout=10_000)
    with VastClient(port=vast_server.port) as client:
        assert client.get_view_coordinates() == (target.x, target.y, target.z)
        assert "membrane-py suggestions" in client.get_layer_names()  # sent as a skeleton
    assert "suggestion 3" in tab.jump_status.text()
    window.close()
