"""Connect tab: the VAST (or bundled server) address, a bundled server over a local volume
for users without VAST, and what the server reports (layers, volume and voxel size)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from membrane_py.tabs.widgets import ERROR_STYLE, OK_STYLE, Form, PathEdit, spin
from membrane_py.vastapi.address import DEFAULT_VAST, parse_vast_address

#: Seconds a GUI-side VAST query may take (a few small replies).
QUERY_TIMEOUT = 5.0

LIGHT = "border-radius: 8px; min-width: 16px; max-width: 16px; min-height: 16px; " \
        "max-height: 16px; background: {};"


@dataclass
class VastState:
    """What the Connect tab learned: the address other tabs use and the layer list."""

    address: str = ""
    layers: list[tuple[int, str, int]] = field(default_factory=list)  # (nr, name, type)
    size_zyx: tuple[int, int, int] = (0, 0, 0)
    voxel_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n_mips: int = 1

    @property
    def connected(self) -> bool:
        return bool(self.address)


def layer_type_name(code: int) -> str:
    from mock_vast_server.layers import LayerKind

    try:
        return LayerKind(code).name.lower()
    except ValueError:
        return f"type {code}"


def query_vast(address: str) -> VastState:
    """Ask the VAST at ``address`` for its info and layers (a few small replies)."""
    from membrane_py.vastapi.client import VastClient

    hostport = parse_vast_address(address)
    if hostport is None:
        raise ValueError(f"{address!r} is not a VAST address: write vast://HOST:PORT, e.g. "
                         f"{DEFAULT_VAST}")
    with VastClient(*hostport, timeout=QUERY_TIMEOUT, connect_timeout=QUERY_TIMEOUT) as vast:
        info = vast.get_info()
        layers = [(nr, (li := vast.get_layer_info(nr)).name, li.type)
                  for nr in range(vast.get_number_of_layers())]
    return VastState(address, layers, tuple(info.data_size), tuple(info.voxel_size), info.n_mips)


class ConnectTab(QWidget):
    """Address, Connect, status light, server facts; start and stop a bundled server."""

    title = "Connect"
    group = "connect"
    connected = Signal(object)  # VastState (address "" when disconnected)

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.state = VastState()
        self.server = None  # a ServerProcess this window started
        self.form = Form()
        self.address = self.form.add("address", QLineEdit(DEFAULT_VAST), "VAST address",
                                     "vast://HOST:PORT of VAST's Remote Control API server "
                                     "(Window > Remote Control API Server in VAST)")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("connect")
        self.light = QLabel()
        self.light.setObjectName("light")
        self.status = QLabel("not connected")
        self.status.setWordWrap(True)
        self.facts = QLabel("")
        self.facts.setObjectName("facts")
        self.layer_list = QListWidget()
        self.layer_list.setObjectName("layers")

        self.serve_form = Form()
        self.volume = self.serve_form.add(
            "volume", PathEdit("file", placeholder="synthetic, a folder, .tif, .h5, .zarr, .vsvi"),
            "Volume", "the EM volume to serve: 'synthetic[:ZxYxX]' or a path")
        self.volume.setText("synthetic:8x1024x1024")
        self.labels = self.serve_form.add(
            "labels", PathEdit("file", placeholder="optional"), "Labels",
            "ground-truth labels served as a segmentation layer (optional)")
        self.allow_load = self.serve_form.add(
            "allow_load", PathEdit("dir", placeholder="optional"), "Load layers from",
            "a folder whose predictions the server may load as layers (Predict's 'load into "
            "VAST'); the volume's folder is always allowed")
        self.port = self.serve_form.add("port", spin(0, 0, 65535), "Port",
                                        "TCP port on 127.0.0.1; 0 picks a free one")
        self.serve_button = QPushButton("Start bundled server")
        self.serve_button.setObjectName("serve")
        self.stop_button = QPushButton("Stop server")
        self.stop_button.setEnabled(False)

        top = QHBoxLayout()
        top.addWidget(self.form, 1)
        top.addWidget(self.connect_button)
        top.addWidget(self.light)
        serve_box = QGroupBox("No VAST at hand? Serve a local volume over the VAST protocol")
        serve_layout = QVBoxLayout(serve_box)
        serve_layout.addWidget(self.serve_form)
        row = QHBoxLayout()
        row.addWidget(self.serve_button)
        row.addWidget(self.stop_button)
        row.addStretch(1)
        serve_layout.addLayout(row)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.status)
        lay.addWidget(self.facts)
        lay.addWidget(QLabel("Layers (number: name, type)"))
        lay.addWidget(self.layer_list, 1)
        lay.addWidget(serve_box)
        self.connect_button.clicked.connect(self.connect_vast)
        self.serve_button.clicked.connect(self.start_server)
        self.stop_button.clicked.connect(self.stop_server)
        self.address.returnPressed.connect(self.connect_vast)
        self._set_light(None)

    def _set_light(self, ok: bool | None) -> None:
        colour = {None: "#9e9e9e", True: "#2e7d32", False: "#c62828"}[ok]
        self.light.setStyleSheet(LIGHT.format(colour))
        self.light.setToolTip({None: "not connected", True: "connected",
                               False: "connection failed"}[ok])

    def connect_vast(self) -> bool:
        """Query the address; fill the layer list and facts, or say what to do."""
        from membrane_py.vastapi.client import VastError

        address = self.address.text().strip()
        try:
            state = query_vast(address)
        except (ValueError, OSError, VastError) as exc:
            self.state = VastState()
            self._set_light(False)
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText(f"{str(exc).splitlines()[0]}  No VAST? Start a bundled server "
                                "below.")
            self.layer_list.clear()
            self.facts.setText("")
            self.connected.emit(self.state)
            return False
        self.state = state
        self._set_light(True)
        self.status.setStyleSheet(OK_STYLE)
        self.status.setText(f"connected to {address}")
        z, y, x = state.size_zyx
        vz, vy, vx = state.voxel_zyx
        self.facts.setText(f"volume {x} x {y} x {z} voxels (x, y, z), {state.n_mips} mip levels; "
                           f"voxel size {vx:g} x {vy:g} x {vz:g} nm")
        self.layer_list.clear()
        for nr, name, kind in state.layers:
            self.layer_list.addItem(f"{nr}: {name} ({layer_type_name(kind)})")
        self.form.save(self.settings, "connect/0")  # the last address that worked
        self.connected.emit(state)
        return True

    def start_server(self) -> bool:
        """Start the bundled mock VAST server on the chosen volume and connect to it."""
        from mock_vast_server.launch import start_server

        self.stop_server()
        volume = self.volume.text() or "synthetic"
        labels = self.labels.text() or None
        try:
            allow = [self.allow_load.text()] if self.allow_load.text() else []
            self.server = start_server(volume, labels=labels, port=self.port.value(),
                                       timeout=60.0, allow_load=allow)
        except (RuntimeError, OSError, ValueError) as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            self.status.setStyleSheet(ERROR_STYLE)
            self.status.setText(f"the server did not start: {lines[-1] if lines else exc}")
            self._set_light(False)
            return False
        self.stop_button.setEnabled(True)
        self.address.setText(f"vast://{self.server.host}:{self.server.port}")
        self.serve_form.save(self.settings, "connect/serve")
        return self.connect_vast()

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.stop_button.setEnabled(False)

    def save_settings(self) -> None:
        self.form.save(self.settings, "connect/0")
        self.serve_form.save(self.settings, "connect/serve")

    def load_settings(self) -> None:
        self.form.load(self.settings, "connect/0")
        self.serve_form.load(self.settings, "connect/serve")
