"""Write docs/screenshots/<tab>.png: the window at 1366 x 768, one picture per tab, after a
real (tiny) run of the whole loop on synthetic data through the window's own widgets.

Run: ``QT_QPA_PLATFORM=offscreen python docs/make_screenshots.py [WORK_FOLDER]``. It starts
a job worker and a bundled VAST-protocol server, converts ground truth, cuts patches, trains
a small U-Net for a few epochs, evaluates it, predicts the served volume, loads the result
into the server, ranks where to annotate next by instability (sent to the server as a
skeleton), paints the prediction as 2D instances, prepares FFN training coordinates and trains a
small FFN for 1000 steps; a few minutes on a laptop CPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from membrane_py.codes import encode_label_png, write_png  # noqa: E402
from membrane_py.tabs.jobs_controller import JobController  # noqa: E402
from membrane_py.tabs.main_window import MainWindow  # noqa: E402
from membrane_py.volumes.synthetic import make_synthetic  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
#: The FFN tab's volume and a small network that trains in about a minute on a CPU.
FFN_VOLUME = "synthetic:20x64x64:3"
SIZE = (1366, 768)


def wait(app: QApplication, done, timeout: float = 600.0) -> None:
    """Let the window run until ``done()`` (the worker's events arrive through its timers)."""
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the window did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def run(app: QApplication, tab) -> None:
    tab.revalidate()
    if not tab.run_button.isEnabled():
        raise RuntimeError(f"{tab.title}: {tab.message.text()}")
    tab.run()
    wait(app, lambda: not tab.panel.running)
    if tab.panel.eta.text() != "done":
        raise RuntimeError(f"{tab.title}: {tab.panel.status.text()}")


def data(root: Path) -> None:
    """EM sections, their membrane labels and neuron instances as PNG folders."""
    syn = make_synthetic((4, 256, 256), seed=5)
    for sub in ("em", "labels", "instances"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for z in range(4):
        write_png(root / "em" / f"s{z}.png", syn.em[z])
        write_png(root / "labels" / f"s{z}.png", encode_label_png(syn.membranes[z], 2))
        write_png(root / "instances" / f"s{z}.png", syn.instances[z].astype(np.uint16))


def shoot(app: QApplication, win: MainWindow, tab, name: str) -> Path:
    win.tabs.setCurrentWidget(tab)
    for _ in range(5):
        app.processEvents()
    path = SCREENSHOTS / f"{name}.png"
    win.grab().save(str(path))
    return path


def main(work: Path) -> list[Path]:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    os.environ["XDG_DATA_HOME"] = str(work / "share")  # a fresh state for the bundled server
    data(work)
    settings = QSettings(str(work / "gui.ini"), QSettings.Format.IniFormat)
    controller = JobController.start_local(state_dir=str(work / "worker"))
    win = MainWindow(controller, settings)
    win.show()
    win.resize(*SIZE)
    shots = []
    try:
        c = win.connect_tab
        c.volume.setText("synthetic:16x1024x1024")
        c.allow_load.setText(str(work))
        if not c.start_server():
            raise RuntimeError(c.status.text())

        gt = win.gt_tab
        gt.form["input"].setText(str(work / "instances"))
        gt.form["output"].setText(str(work / "membranes"))
        run(app, gt)

        p = win.patches_tab
        p.f["images"].setText(str(work / "em"))
        p.f["labels"].setText(str(work / "labels"))
        p.f["out_images"].setText(str(work / "patches" / "images"))
        p.f["out_labels"].setText(str(work / "patches" / "labels"))
        p.g["patch_size"].setValue(128)
        p.g["density"].setValue(300.0)
        p.g["label_map"].setText("0:1,255:2")
        run(app, p)

        t = win.train_tab
        t.f["image_dir"].setText(str(work / "patches" / "images"))
        t.f["label_dir"].setText(str(work / "patches" / "labels"))
        t.f["out_dir"].setText(str(work / "run"))
        t.f["name"].setText("demo-unet")
        for key, value in (("epochs", 6), ("patch_size", 128), ("lr", 3e-3)):
            t.g[key].setValue(value)
        for key, value in (("depth", 3), ("base_filters", 8), ("patches_per_epoch", 96),
                           ("val_patches", 32), ("log_every", 2)):
            t.a[key].setValue(value)
        run(app, t)
        checkpoint = work / "run" / "demo-unet.pt"

        e = win.evaluate_tab
        e.f["checkpoint"].setText(str(checkpoint))
        e.f["images"].setText(str(work / "em"))
        e.f["label_dir"].setText(str(work / "labels"))
        e.f["out"].setText(str(work / "evaluation"))
        run(app, e)
        e.view.setCurrentIndex(e.view.findData("errors"))

        pr = win.predict_tab
        pr.f["checkpoint"].setText(str(checkpoint))
        pr.o["out"].setText(str(work / "prediction"))
        pr.o["load_in_vast"].setChecked(True)
        run(app, pr)  # the window re-reads VAST's layers: the prediction is in the lists

        su = win.suggest_tab
        su.f["map"].setText(str(work / "prediction" / "probability.vsvi"))
        su.f["score"].setCurrentIndex(su.f["score"].findText("instability"))
        su.r["k"].setValue(8)
        su.r["out"].setText(str(work / "suggest"))
        run(app, su)

        pa = win.paint_tab
        layers = pa.f["source_layer"]
        layers.setCurrentIndex(next(i for i in range(layers.count())
                                    if layers.itemText(i).endswith("membrane prediction")))
        pa.f["mode"].setCurrentIndex(pa.f["mode"].findData("instances2d"))
        pa.w["region"].setCurrentIndex(pa.w["region"].findData("box"))
        pa.w["box"].setText("0,1023,0,1023,0,3")
        pa.w["save"].setChecked(False)
        run(app, pa)

        f = win.ffn_tab
        f.m["mode"].setCurrentIndex(f.m["mode"].findData("prep"))
        f.p["labels"].setText(FFN_VOLUME)
        f.p["output"].setText(str(work / "ffn" / "coordinates.npz"))
        f.p["min_size"].setValue(50)
        for key, value in (("radius", "6,6,6"), ("margin", "6,6,6")):
            f.pa[key].setText(value)
        run(app, f)
        f.m["mode"].setCurrentIndex(f.m["mode"].findData("train"))
        f.t["image"].setText(FFN_VOLUME)
        f.t["labels"].setText(FFN_VOLUME)
        f.t["coordinates"].setText(str(work / "ffn" / "coordinates.npz"))
        f.t["output"].setText(str(work / "ffn" / "demo-ffn.pt"))
        f.t["optimizer"].setCurrentIndex(f.t["optimizer"].findData("adam"))
        for key, value in (("steps", 1000), ("batch_size", 4), ("learning_rate", 3e-3)):
            f.t[key].setValue(value)
        for key, value in (("depth", 2), ("features", 8)):
            f.ta[key].setValue(value)
        for key, value in (("fov", "9,9,9"), ("deltas", "2,2,2")):
            f.ta[key].setText(value)
        run(app, f)

        win.jobs_tab.table.selectRow(2)
        for tab, name in ((c, "connect"), (gt, "ground_truth"), (p, "patches"), (t, "train"),
                          (e, "evaluate"), (pr, "predict"), (su, "suggest"), (pa, "paint"),
                          (f, "ffn"),
                          (win.jobs_tab, "jobs")):
            shots.append(shoot(app, win, tab, name))
    finally:
        win.close()
        controller.close()
    return shots


if __name__ == "__main__":
    if len(sys.argv) > 1:
        folder = Path(sys.argv[1])
        folder.mkdir(parents=True, exist_ok=True)
        print("\n".join(str(p) for p in main(folder)))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(str(p) for p in main(Path(tmp))))
