"""The window, driven offscreen through its widgets (typed text, clicks) against a real
mock VAST server process and a real job worker process."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt, QTimer  # noqa: E402

from membrane_py.codes import encode_label_png, write_png  # noqa: E402
from membrane_py.tabs.jobs_controller import JobController  # noqa: E402
from membrane_py.tabs.main_window import MainWindow  # noqa: E402
from membrane_py.vastapi.client import VastClient  # noqa: E402

#: Seconds a GUI job may take before a test gives up.
JOB_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def controller(qapp, tmp_path_factory):
    """A controller over a real worker process, shared by the module's tests."""
    ctl = JobController.start_local(state_dir=tmp_path_factory.mktemp("worker"))
    assert ctl.available, ctl.last_error
    yield ctl
    ctl.close()


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "gui.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, controller, settings):
    win = MainWindow(controller, settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained U-Net checkpoint (prediction only needs deterministic weights)."""
    import torch

    from membrane_py.augment.preprocess import PreprocessConfig
    from membrane_py.models.unet import UNet, UNetConfig
    from membrane_py.train.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_filters=4))
    ck = Checkpoint(state_dict=net.state_dict(), model=net.config.to_dict(),
                    class_names=["non-membrane", "membrane"],
                    preprocess=PreprocessConfig().to_dict())
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "net.pt", ck)


@pytest.fixture(scope="module")
def em_folders(tmp_path_factory):
    """Synthetic EM sections and their exact membrane labels as PNG folders."""
    from membrane_py.volumes.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data")
    syn = make_synthetic((3, 128, 128), seed=3)
    for sub in ("em", "labels", "instances"):
        (root / sub).mkdir()
    for z in range(3):
        write_png(root / "em" / f"s{z}.png", syn.em[z])
        write_png(root / "labels" / f"s{z}.png", encode_label_png(syn.membranes[z], 2))
        write_png(root / "instances" / f"s{z}.png", syn.instances[z].astype(np.uint16))
    return root


def type_into(qtbot, widget, text: str) -> None:
    """Replace a line edit's (or path field's) text by typing, as a user would."""
    edit = getattr(widget, "edit", widget)
    edit.clear()
    qtbot.keyClicks(edit, str(text))


def click(qtbot, button) -> None:
    assert button.isEnabled(), "button disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def wait_finished(qtbot, tab, timeout: int = JOB_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not tab.panel.running, timeout=timeout)


def connect(qtbot, window, server) -> None:
    tab = window.connect_tab
    type_into(qtbot, tab.address, f"vast://{server.host}:{server.port}")
    click(qtbot, tab.connect_button)
    assert tab.state.connected, tab.status.text()


def test_connect_lists_the_servers_layers_and_sizes(qtbot, window, vast_server):
    connect(qtbot, window, vast_server)
    tab = window.connect_tab
    with VastClient(vast_server.host, vast_server.port) as vast:
        names = vast.get_layer_names()
        z, y, x = vast.get_info().data_size
    shown = [tab.layer_list.item(i).text() for i in range(tab.layer_list.count())]
    assert [s.split(": ", 1)[1].rsplit(" (", 1)[0] for s in shown] == names
    assert f"{x} x {y} x {z}" in tab.facts.text()
    assert tab.light.toolTip() == "connected"
    predict = window.predict_tab
    assert predict.f["layer"].count() == len(names)
    predict.f["region"].setCurrentIndex(predict.f["region"].findData("anchors"))
    skeletons = names.index("skeletons")
    predict.f["anno_layer"].setCurrentIndex(predict.f["anno_layer"].findData(skeletons))
    type_into(qtbot, predict.f["checkpoint"], __file__)  # any existing file for the spec
    region = predict.build_spec().region
    assert region.mode == "anchors" and region.anno_layer == skeletons
    assert window.vast_label.text().endswith(f"{vast_server.port}")


def test_connect_failure_says_what_to_do(qtbot, window):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tab = window.connect_tab
    type_into(qtbot, tab.address, f"vast://127.0.0.1:{port}")
    click(qtbot, tab.connect_button)
    assert not tab.state.connected
    assert "cannot connect" in tab.status.text() and "bundled server" in tab.status.text()
    assert "Traceback" not in tab.status.text()
    assert tab.light.toolTip() == "connection failed"
    type_into(qtbot, tab.address, "localhost:22081")
    click(qtbot, tab.connect_button)
    assert "vast://HOST:PORT" in tab.status.text()


def test_invalid_inputs_disable_run_with_a_message_that_says_what_to_fix(
        qtbot, window, tmp_path, em_folders):
    tab = window.train_tab
    assert not tab.run_button.isEnabled()
    assert tab.message.text() == "choose the image patch folder"
    type_into(qtbot, tab.f["image_dir"], tmp_path / "nope")
    assert "is not an existing folder" in tab.message.text()
    type_into(qtbot, tab.f["image_dir"], em_folders / "em")
    type_into(qtbot, tab.f["label_dir"], em_folders / "labels")
    type_into(qtbot, tab.f["out_dir"], tmp_path / "run")
    assert tab.run_button.isEnabled(), tab.message.text()
    tab.a["depth"].setValue(5)
    tab.g["patch_size"].setValue(100)  # not a multiple of 2**depth: the spec's own check
    assert not tab.run_button.isEnabled()
    assert "must be a multiple of 2**depth = 32" in tab.message.text()
    tab.g["patch_size"].setValue(128)
    assert tab.run_button.isEnabled()
    type_into(qtbot, tab.g["val_image_dir"], em_folders / "em")  # validation without labels
    assert not tab.run_button.isEnabled() and "validation images and" in tab.message.text()
    type_into(qtbot, tab.g["val_label_dir"], em_folders / "labels")
    assert tab.run_button.isEnabled(), tab.message.text()
    assert tab.build_spec().val_label_dir == str(em_folders / "labels")

    tab.f["network"].setCurrentIndex(tab.f["network"].findData("pretrained"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    type_into(qtbot, tab.f["pretrained"], tmp_path / "bad.pt")
    assert not tab.run_button.isEnabled() and "bad.pt" in tab.message.text()
    assert "Traceback" not in tab.message.text()
    tab.f["network"].setCurrentIndex(tab.f["network"].findData("new"))
    assert tab.run_button.isEnabled()

    predict = window.predict_tab
    type_into(qtbot, predict.f["checkpoint"], tmp_path / "missing.pt")
    assert not predict.run_button.isEnabled()
    assert "does not exist" in predict.message.text()
    type_into(qtbot, predict.f["checkpoint"], "")  # empty: the shipped starter model
    assert "network" not in predict.message.text()
    assert predict.message.text().startswith("connect to VAST")  # the next thing missing


def test_bundled_server_starts_on_a_chosen_volume_and_connects(qtbot, window, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # the server's state goes there
    tab = window.connect_tab
    type_into(qtbot, tab.volume, "synthetic:4x128x192")
    click(qtbot, tab.serve_button)
    try:
        assert tab.state.connected and tab.server is not None, tab.status.text()
        assert tab.state.size_zyx == (4, 128, 192)
        assert "192 x 128 x 4" in tab.facts.text()
        assert tab.layer_list.count() >= 1 and tab.stop_button.isEnabled()
    finally:
        click(qtbot, tab.stop_button)
    assert tab.server is None
    type_into(qtbot, tab.volume, "/no/such/volume.tif")
    click(qtbot, tab.serve_button)
    assert "the server did not start" in tab.status.text()
    assert "Traceback" not in tab.status.text() and len(tab.status.text().splitlines()) == 1


def test_window_fits_a_1366_x_768_screen(window):
    hint = window.minimumSizeHint().expandedTo(window.minimumSize())
    assert hint.width() <= 1366 and hint.height() <= 768 - 40  # room for a task bar


def test_shortcuts_switch_tabs(qtbot, window):
    qtbot.keyClick(window, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.train_tab
    qtbot.keyClick(window, Qt.Key.Key_7, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.suggest_tab
    qtbot.keyClick(window, Qt.Key.Key_9, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.ffn_tab
    qtbot.keyClick(window, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.jobs_tab  # the tenth tab


def test_gui_command_with_an_unreachable_worker_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from membrane_py.cli import app

    res = CliRunner().invoke(app, ["gui", "--worker", str(tmp_path / "nowhere"),
                                   "--settings", str(tmp_path / "s.ini")])
    assert res.exit_code == 2
    assert "cannot reach the worker" in res.output and "Traceback" not in res.output


def test_settings_persist_across_window_instances(qtbot, controller, settings, tmp_path):
    first = MainWindow(controller, settings)
    qtbot.addWidget(first)
    type_into(qtbot, first.train_tab.f["name"], "my-net")
    first.train_tab.g["epochs"].setValue(37)
    first.predict_tab.f["region"].setCurrentIndex(1)
    type_into(qtbot, first.predict_tab.f["box"], "0,99,0,99,0,3")
    first.tabs.setCurrentIndex(5)
    first.close()

    second = MainWindow(controller, QSettings(settings.fileName(), QSettings.Format.IniFormat))
    qtbot.addWidget(second)
    assert second.train_tab.f.value("name") == "my-net"
    assert second.train_tab.g.value("epochs") == 37
    assert second.predict_tab.f.value("region") == "box"
    assert second.predict_tab.f.value("box") == "0,99,0,99,0,3"
    assert second.tabs.currentIndex() == 5
    second.close()


def same_files(a, b, pattern: str = "*.png") -> int:
    """Assert two folders hold byte-identical files (by relative path); their number."""
    files_a = sorted(p.relative_to(a) for p in a.rglob(pattern))
    assert files_a and files_a == sorted(p.relative_to(b) for p in b.rglob(pattern))
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    return len(files_a)


def run_like_the_cli(spec, tmp_path, **changes) -> None:
    """Run ``spec`` (with ``changes``) the way `membrane run FILE.json` does."""
    from typer.testing import CliRunner

    from membrane_py.cli import app

    job = tmp_path / f"{spec.kind}-cli.json"
    job.write_text(json.dumps({**spec.to_dict(), **changes}))
    res = CliRunner().invoke(app, ["run", str(job)])
    assert res.exit_code == 0, res.output


def test_ground_truth_converts_and_previews_like_the_cli(qtbot, window, em_folders, tmp_path):
    tab = window.gt_tab
    window.tabs.setCurrentWidget(tab)
    type_into(qtbot, tab.form["input"], em_folders / "instances")
    assert tab.input_view.has_image()
    type_into(qtbot, tab.form["output"], tmp_path / "membranes")
    tab.form["thickness"].setValue(2)
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    assert tab.result_view.has_image()
    run_like_the_cli(tab.build_spec(), tmp_path, output=str(tmp_path / "cli"))
    assert same_files(tmp_path / "membranes", tmp_path / "cli") == 6  # 3 labels + previews


def test_patches_train_and_evaluate_through_the_window(qtbot, window, em_folders, tmp_path):
    patches = window.patches_tab
    window.tabs.setCurrentWidget(patches)
    type_into(qtbot, patches.f["images"], em_folders / "em")
    type_into(qtbot, patches.f["labels"], em_folders / "labels")
    type_into(qtbot, patches.f["out_images"], tmp_path / "p_im")
    type_into(qtbot, patches.f["out_labels"], tmp_path / "p_lab")
    patches.g["patch_size"].setValue(64)
    patches.g["density"].setValue(400.0)
    type_into(qtbot, patches.g["label_map"], "0:1,255:2")
    click(qtbot, patches.preview_button)
    assert patches.mask_view.has_image() and "valid centres" in patches.mask_note.text()
    click(qtbot, patches.run_button)
    wait_finished(qtbot, patches)
    assert patches.panel.eta.text() == "done", patches.panel.status.text()
    assert all(v.has_image() for v in patches.grid_views)
    manifest = json.loads((tmp_path / "p_im" / "manifest.json").read_text())
    assert manifest["patch_size"] == 64 and len(manifest["patches"]) >= len(patches.grid_views)
    run_like_the_cli(patches.build_spec(), tmp_path, out_images=str(tmp_path / "cli_im"),
                     out_labels=str(tmp_path / "cli_lab"))
    assert same_files(tmp_path / "p_im", tmp_path / "cli_im") == len(manifest["patches"])
    assert same_files(tmp_path / "p_lab", tmp_path / "cli_lab") == len(manifest["patches"])

    train = window.train_tab
    window.tabs.setCurrentWidget(train)
    type_into(qtbot, train.f["image_dir"], tmp_path / "p_im")
    type_into(qtbot, train.f["label_dir"], tmp_path / "p_lab")
    type_into(qtbot, train.f["out_dir"], tmp_path / "run")
    type_into(qtbot, train.f["name"], "tiny")
    for name, value in (("epochs", 2), ("patch_size", 64), ("batch_size", 4)):
        train.g[name].setValue(value)
    for name, value in (("depth", 2), ("base_filters", 4), ("patches_per_epoch", 16),
                        ("val_patches", 8), ("log_every", 1)):
        train.a[name].setValue(value)
    train.a["device"].setCurrentText("cpu")
    train.f["save_onnx"].setChecked(True)
    click(qtbot, train.run_button)
    wait_finished(qtbot, train)
    assert train.panel.eta.text() == "done", train.panel.status.text()
    assert train.panel.job_id is None and "tiny.onnx" in train.panel.status.text()
    assert (tmp_path / "run" / "tiny.onnx").is_file()
    total = train.iterations
    assert total > 0 and len(train.points["iter"]) == total  # log_every 1: one point each
    assert list(train.iter_curve.getData()[0]) == list(range(1, total + 1))
    assert len(train.val_curve.getData()[0]) == 2
    assert train.table.rowCount() == 2
    header = [train.table.horizontalHeaderItem(c).text() for c in range(train.table.columnCount())]
    assert "val_loss" in header
    assert (tmp_path / "run" / "tiny.pt").is_file()

    ev = window.evaluate_tab
    window.tabs.setCurrentWidget(ev)
    type_into(qtbot, ev.f["checkpoint"], tmp_path / "run" / "tiny.pt")
    type_into(qtbot, ev.f["images"], em_folders / "em")
    type_into(qtbot, ev.f["label_dir"], em_folders / "labels")
    type_into(qtbot, ev.f["out"], tmp_path / "eval")
    click(qtbot, ev.run_button)
    wait_finished(qtbot, ev)
    assert ev.panel.eta.text() == "done", ev.panel.status.text()
    assert ev.table.rowCount() == 4  # three images and the mean
    assert ev.image.has_image() and "s0_prediction.png" in ev.caption.text()
    click(qtbot, ev.next_button)
    assert "s1_prediction.png" in ev.caption.text()
    ev.view.setCurrentIndex(ev.view.findData("errors"))
    assert "s1_errors.png" in ev.caption.text() and ev.image.has_image()
    assert ev.save_current(tmp_path / "saved.png")
    shown = tmp_path / "eval" / "s1_errors.png"
    assert (tmp_path / "saved.png").read_bytes() == shown.read_bytes()


def test_cancel_a_running_training(qtbot, window, em_folders, tmp_path):
    train = window.train_tab
    type_into(qtbot, train.f["image_dir"], em_folders / "em")
    type_into(qtbot, train.f["label_dir"], em_folders / "labels")
    type_into(qtbot, train.f["out_dir"], tmp_path / "run")
    train.g["epochs"].setValue(500)
    train.g["patch_size"].setValue(64)
    for name, value in (("depth", 2), ("base_filters", 4), ("patches_per_epoch", 64),
                        ("log_every", 1)):
        train.a[name].setValue(value)
    click(qtbot, train.run_button)
    assert not train.run_button.isEnabled()  # one job per tab at a time
    train_job = train.panel.job_id
    qtbot.waitUntil(lambda: len(train.points["iter"]) > 0, timeout=JOB_TIMEOUT_MS)
    assert train.iter_curve.getData()[0] is not None  # the curve received points
    assert train.panel.bar.value() > 0 and "ETA" in train.panel.eta.text()
    # an epoch's row: whole-section validation and whether adapting the batch norm won
    qtbot.waitUntil(lambda: train.table.rowCount() >= 1, timeout=JOB_TIMEOUT_MS)
    header = [train.table.horizontalHeaderItem(c).text() for c in range(train.table.columnCount())]
    assert {"val_section_v_rand", "val_section_adapt_bn"} <= set(header)
    click(qtbot, train.panel.cancel)
    wait_finished(qtbot, train, timeout=30_000)
    assert train.panel.eta.text() == "cancelled"
    assert "cancel" in train.panel.status.text()
    assert train.run_button.isEnabled()
    last = tmp_path / "run" / "unet_last.pt"  # the cancelled run's resumable checkpoint
    assert last.is_file() and train.a.value("resume") == str(last)
    assert "Run continues from unet_last.pt" in train.panel.status.text()
    assert train.build_spec().resume == str(last)
    jobs = window.jobs_tab
    row = jobs.rows[train_job]
    assert jobs.table.item(row, 2).text() == "cancelled"
    jobs.table.selectRow(row)
    assert "[train]" in jobs.log.toPlainText()  # the job's progress and metric lines


def test_paint_a_threshold_mask_into_a_new_vast_layer(qtbot, window, vast_server):
    connect(qtbot, window, vast_server)
    tab = window.paint_tab
    window.tabs.setCurrentWidget(tab)
    tab.f["source_layer"].setCurrentIndex(0)  # the EM layer stands in for a probability map
    tab.f["mode"].setCurrentIndex(tab.f["mode"].findData("mask"))
    tab.w["region"].setCurrentIndex(tab.w["region"].findData("box"))
    type_into(qtbot, tab.w["box"], "0,63,0,63,0,1")
    tab.w["save"].setChecked(False)
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    from membrane_py.geometry import Box

    with VastClient(vast_server.host, vast_server.port) as vast:
        layer = next(nr for nr in range(vast.get_number_of_layers())
                     if vast.get_layer_info(nr).name == "membrane-py predictions")
        vast.set_selected_layer(layer)
        painted = vast.get_seg_image(Box.from_vast_list([0, 63, 0, 63, 0, 1]))
        em = vast.get_em_image(0, Box.from_vast_list([0, 63, 0, 63, 0, 1]))
    assert f"layer {layer}:" in tab.summary.text()
    assert f"{int((painted > 0).sum())} voxels painted" in tab.summary.text()
    assert (painted > 0).sum() == (em >= 128).sum() > 0  # threshold 0.5 of 8-bit codes
    assert tab.painted.has_image()  # the painted section, read back


def fill_predict(qtbot, tab, checkpoint, out, box: str, load: bool) -> None:
    type_into(qtbot, tab.f["checkpoint"], checkpoint)
    type_into(qtbot, tab.o["out"], out)
    tab.f["region"].setCurrentIndex(tab.f["region"].findData("box"))
    type_into(qtbot, tab.f["box"], box)
    tab.o["load_in_vast"].setChecked(load)


def test_predict_a_box_from_vast_shows_tiles_and_equals_the_cli(
        qtbot, window, vast_server, checkpoint, tmp_path):
    connect(qtbot, window, vast_server)
    tab = window.predict_tab
    window.tabs.setCurrentWidget(tab)
    assert tab.f["layer"].currentData() == 0  # the EM layer
    fill_predict(qtbot, tab, checkpoint, tmp_path / "pred", "0,255,0,255,0,7", load=False)
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    assert tab.tiles_shown >= 1 and tab.tile_view.has_image()
    assert "written" in tab.speed.text() and "MB/s" in tab.speed.text()
    run_like_the_cli(tab.build_spec(), tmp_path, out=str(tmp_path / "cli"))
    assert same_files(tmp_path / "pred", tmp_path / "cli") >= 8  # 8 sections, pyramid too
    assert tab.build_spec().adapt_bn is None  # the network decides
    tab.a["adapt_bn"].setCurrentIndex(tab.a["adapt_bn"].findData("on"))
    assert tab.build_spec().adapt_bn is True  # the choice reaches the job


def test_follow_vast_view_toggle_predicts_around_the_view_until_cancelled(
        qtbot, window, vast_server, checkpoint, tmp_path):
    connect(qtbot, window, vast_server)
    with VastClient(vast_server.host, vast_server.port) as vast:
        vast.set_view_coordinates(100, 100, 3)
        vast.set_view_zoom(0)
    tab = window.predict_tab
    window.tabs.setCurrentWidget(tab)
    type_into(qtbot, tab.f["checkpoint"], checkpoint)
    type_into(qtbot, tab.o["out"], tmp_path / "follow")
    tab.o["load_in_vast"].setChecked(False)
    tab.f["follow"].setChecked(True)
    assert tab.build_spec().kind == "follow"
    click(qtbot, tab.run_button)
    # the tile and the progress line that counts it arrive as two events
    qtbot.waitUntil(lambda: tab.tiles_shown >= 1 and "wrote section" in tab.speed.text(),
                    timeout=JOB_TIMEOUT_MS)
    assert "tiles written" in tab.speed.text()
    click(qtbot, tab.panel.cancel)
    wait_finished(qtbot, tab, timeout=30_000)
    assert tab.panel.eta.text() == "cancelled"
    assert (tmp_path / "follow" / "mip0" / "probability" / "mip0" / "Sect_000003").is_dir()
    tab.f["follow"].setChecked(False)


def test_worker_killed_mid_prediction_is_reported_and_the_rerun_is_identical(
        qtbot, window, controller, checkpoint, tmp_path):
    import tifffile

    volume = tmp_path / "em.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(volume, rng.integers(0, 256, (6, 512, 512), dtype=np.uint8))
    tab = window.predict_tab
    window.tabs.setCurrentWidget(tab)
    type_into(qtbot, tab.f["source"], volume)
    fill_predict(qtbot, tab, checkpoint, tmp_path / "pred", "0,511,0,511,0,5", load=False)
    tab.a["chunk_z"].setValue(1)  # six reads, one progress event each
    spec = tab.build_spec()
    run_like_the_cli(spec, tmp_path, out=str(tmp_path / "reference"))

    click(qtbot, tab.run_button)
    qtbot.waitUntil(lambda: tab.panel.bar.maximum() > 1 and tab.panel.bar.value() >= 1,
                    timeout=JOB_TIMEOUT_MS)
    assert tab.panel.bar.value() < tab.panel.bar.maximum()
    ticks = []  # a 20 ms timer: the event loop's pulse while the worker is restarted
    pulse = QTimer()
    pulse.timeout.connect(lambda: ticks.append(time.monotonic()))
    pulse.start(20)
    controller.client.process.kill()
    wait_finished(qtbot, tab, timeout=60_000)
    assert tab.panel.eta.text() == "failed"
    assert "worker stopped" in tab.panel.status.text() and "Run again" in tab.panel.status.text()
    qtbot.waitUntil(lambda: "restarted" in window.worker_label.text(), timeout=60_000)
    pulse.stop()
    assert len(ticks) > 10 and np.diff(ticks).max() < 0.5  # the window never froze
    window.tabs.setCurrentWidget(window.jobs_tab)  # the window still answers
    assert window.tabs.currentWidget() is window.jobs_tab
    window.tabs.setCurrentWidget(tab)
    qtbot.waitUntil(tab.run_button.isEnabled, timeout=10_000)
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    assert tab.tiles_shown >= 2  # the preview followed the rerun's tiles
    assert same_files(tmp_path / "pred", tmp_path / "reference") >= 6


def test_train_from_a_pretrained_network_inherits_its_architecture(qtbot, window, checkpoint,
                                                                   em_folders, tmp_path):
    from membrane_py.train.checkpoint import load_checkpoint

    tab = window.train_tab
    type_into(qtbot, tab.f["image_dir"], em_folders / "em")
    type_into(qtbot, tab.f["label_dir"], em_folders / "labels")
    type_into(qtbot, tab.f["out_dir"], tmp_path / "run")
    tab.f["network"].setCurrentIndex(tab.f["network"].findData("pretrained"))
    type_into(qtbot, tab.f["pretrained"], checkpoint)
    tab.f["transfer_mode"].setCurrentIndex(tab.f["transfer_mode"].findData("leaky"))
    tab.f["leaky_ratio"].setValue(0.2)
    tab.g["patch_size"].setValue(64)
    assert tab.run_button.isEnabled(), tab.message.text()
    spec = tab.build_spec()
    parent = load_checkpoint(checkpoint).model_config
    assert (spec.depth, spec.base_filters) == (parent.depth, parent.base_filters)
    assert spec.depth != tab.a.value("depth")  # the fold's own depth is not used
    assert spec.pretrained == str(checkpoint) and spec.transfer_mode == "leaky"
    assert spec.leaky_ratio == 0.2


FFN_SYNTH = "synthetic:20x64x64:3"


def ffn_mode(tab, mode: str) -> None:
    tab.m["mode"].setCurrentIndex(tab.m["mode"].findData(mode))


def test_ffn_invalid_inputs_disable_run_with_a_message(qtbot, window, tmp_path):
    tab = window.ffn_tab
    window.tabs.setCurrentWidget(tab)
    ffn_mode(tab, "infer")
    assert tab.run_button.text() == "Segment" and not tab.plot.isVisible()
    assert not tab.run_button.isEnabled()
    assert tab.message.text().startswith("choose the image volume, or connect to VAST")
    type_into(qtbot, tab.i["image"], tmp_path / "nope.tif")
    assert "does not exist" in tab.message.text()
    type_into(qtbot, tab.i["image"], FFN_SYNTH)
    type_into(qtbot, tab.i["checkpoint"], __file__)
    assert tab.message.text() == "network test_gui.py must be a .pt or .index file"
    (tmp_path / "net.pt").write_bytes(b"")
    type_into(qtbot, tab.i["checkpoint"], tmp_path / "net.pt")
    type_into(qtbot, tab.i["output"], tmp_path / "seg.tif")
    assert tab.run_button.isEnabled(), tab.message.text()
    type_into(qtbot, tab.i["box"], "0,39,0,39")
    assert not tab.run_button.isEnabled()
    assert tab.message.text() == "box must be 6 comma-separated integers, got '0,39,0,39'"
    type_into(qtbot, tab.i["box"], "0,39,0,39,0,19")
    type_into(qtbot, tab.i["seeds"], "20,20,10; 30,12")
    assert "seed (x,y,z) must be 3" in tab.message.text()
    type_into(qtbot, tab.i["seeds"], "")
    tab.i["paint"].setChecked(True)
    assert tab.message.text().startswith("'paint into VAST' needs a connected VAST")
    tab.i["paint"].setChecked(False)
    assert tab.run_button.isEnabled()
    ffn_mode(tab, "train")  # each step validates its own fields
    assert tab.plot.isVisible() and not tab.run_button.isEnabled()
    assert tab.t["image_layer"].isVisible()  # empty volume: a VAST layer is chosen
    assert tab.message.text().startswith("choose the image volume")


def test_ffn_prep_train_and_segment_through_the_window_equal_the_cli(
        qtbot, window, tmp_path):
    import tifffile

    tab = window.ffn_tab
    window.tabs.setCurrentWidget(tab)
    ffn_mode(tab, "prep")
    type_into(qtbot, tab.p["labels"], FFN_SYNTH)
    type_into(qtbot, tab.p["output"], tmp_path / "coords.npz")
    tab.p["min_size"].setValue(50)
    type_into(qtbot, tab.pa["radius"], "4,4,4")
    type_into(qtbot, tab.pa["margin"], "6,6,6")
    tab.pa["max_per_partition"].setValue(50)
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    assert (tmp_path / "coords.npz").is_file()

    ffn_mode(tab, "train")
    for name in ("image", "labels"):
        type_into(qtbot, tab.t[name], FFN_SYNTH)
    type_into(qtbot, tab.t["coordinates"], tmp_path / "coords.npz")
    type_into(qtbot, tab.t["output"], tmp_path / "ffn.pt")
    tab.t["steps"].setValue(4)
    tab.t["batch_size"].setValue(2)
    tab.ta["depth"].setValue(1)
    tab.ta["features"].setValue(4)
    type_into(qtbot, tab.ta["fov"], "7,9,9")
    type_into(qtbot, tab.ta["deltas"], "2,2,2")
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    xs, ys = tab.loss_curve.getData()
    assert list(xs) == [1, 2, 3, 4] and np.all(np.asarray(ys) > 0)  # one point per step
    means = tab.mean_curve.getData()[1]
    assert np.allclose(means, np.cumsum(ys) / np.arange(1, 5))  # the running mean
    assert not tab.t["image_layer"].isVisible()  # VAST layers only for an empty volume

    ffn_mode(tab, "infer")
    type_into(qtbot, tab.i["image"], FFN_SYNTH)
    type_into(qtbot, tab.i["checkpoint"], tmp_path / "ffn.pt")
    type_into(qtbot, tab.i["output"], tmp_path / "gui.tif")
    type_into(qtbot, tab.i["box"], "0,39,0,39,0,19")
    type_into(qtbot, tab.i["seeds"], "20,20,10; 30,12,8")
    tab.i["min_segment_size"].setValue(1)  # an untrained network keeps about its seeds
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    assert "objects from" in tab.panel.status.text()
    spec = tab.build_spec()
    assert spec.kind == "ffn-infer" and spec.model is None  # a .pt knows its geometry
    run_like_the_cli(spec, tmp_path, output=str(tmp_path / "cli.tif"))
    gui, cli = tifffile.imread(tmp_path / "gui.tif"), tifffile.imread(tmp_path / "cli.tif")
    assert gui.shape == (20, 40, 40) and gui[10, 20, 20] > 0
    assert gui.dtype == cli.dtype and np.array_equal(gui, cli)


@pytest.fixture(scope="module")
def ffn_checkpoint(tmp_path_factory):
    """A tiny FFN trained for three steps (inference only needs deterministic weights)."""
    from membrane_py.ffn.prep import FFNPrepJob
    from membrane_py.ffn.train import FFNTrainJob
    from membrane_py.jobs import registry
    from membrane_py.models.ffn import FFNConfig

    tmp = tmp_path_factory.mktemp("ffn")
    registry.run(FFNPrepJob(labels=FFN_SYNTH, output=str(tmp / "c.npz"), radius=(4, 4, 4),
                            margin=(6, 6, 6), min_size=50, max_per_partition=50))
    return registry.run(FFNTrainJob(
        image=FFN_SYNTH, labels=FFN_SYNTH, coordinates=str(tmp / "c.npz"),
        output=str(tmp / "m.pt"), model=FFNConfig(depth=1, features=4, fov=(7, 9, 9),
                                                  deltas=(2, 2, 2)),
        steps=3, batch_size=2)).path


def test_ffn_segments_a_vast_box_and_paints_it_into_a_new_layer(
        qtbot, window, vast_server, ffn_checkpoint, tmp_path):
    from membrane_py.geometry import Box

    connect(qtbot, window, vast_server)
    tab = window.ffn_tab
    window.tabs.setCurrentWidget(tab)
    ffn_mode(tab, "infer")
    assert tab.i["image_layer"].currentData() == 0  # the EM layer of the served volume
    type_into(qtbot, tab.i["checkpoint"], ffn_checkpoint)
    type_into(qtbot, tab.i["output"], tmp_path / "s.npz")
    type_into(qtbot, tab.i["box"], "0,49,0,49,0,7")
    type_into(qtbot, tab.i["seeds"], "20,20,3")
    tab.i["min_segment_size"].setValue(1)
    tab.i["paint"].setChecked(True)
    type_into(qtbot, tab.i["layer_name"], "gui ffn")
    assert tab.build_spec().paint == f"vast://{vast_server.host}:{vast_server.port}"
    click(qtbot, tab.run_button)
    wait_finished(qtbot, tab)
    assert tab.panel.eta.text() == "done", tab.panel.status.text()
    seg = np.load(tmp_path / "s.npz")["segmentation"]
    with VastClient(vast_server.host, vast_server.port) as c:
        names = c.get_layer_names()
        assert "gui ffn" in names
        c.set_selected_api_layer(names.index("gui ffn"))
        painted = c.get_seg_image_rle(Box(0, 8, 0, 50, 0, 50), 0)
    assert seg.any() and ((painted > 0) == (seg > 0)).all()
