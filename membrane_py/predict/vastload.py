"""Showing a running prediction in VAST: load each output's ``.vsvi`` once, reuse that
layer on later runs, and refresh the region of the layer as tiles land.

VAST reads image tiles when it first shows a region and keeps what it read; tiles written
afterwards (the rest of a running job) stay black until the region is refreshed
(REFRESHLAYERREGION). :class:`LayerRefresher` does that after each finished chunk, at most
every ``interval`` seconds (the boxes in between are merged), and once more at the end. A
VAST that answers REFRESHLAYERREGION with error 1 (a version without it) gets the layers
removed and loaded again in their places instead (:func:`reload_layers`).

A rerun into the same output folder reuses the layer it loaded before instead of adding
another layer of the same name: the folder's ``vast_layers.json`` records, per VAST
address, the name VAST gave each descriptor's layer (and the layer name the job asked
for), and the layer with that name is reused when VAST still has it and the job asks for
the same name. The descriptors cover the whole volume (:mod:`membrane_py.volumes.tiles`),
so they rarely change between runs and a reused layer shows the new tiles once refreshed;
when one did change (e.g. a pyramid or a voxel size was added), its layer is removed and
loaded again at the same place. A layer of the same name that this folder did not load is
left alone.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from membrane_py.atomic import write_text_atomic
from membrane_py.geometry import Box
from membrane_py.vastapi.client import VastClient, VastError

RECORD_FILE = "vast_layers.json"


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_or_reuse(client: VastClient, out: str | Path, descriptors: list[Path],
                  layer_names: list[str]) -> tuple[list[int], list[bool]]:
    """VAST layer numbers showing ``descriptors`` (one per output, named ``layer_names``)
    and, per output, whether an existing layer was reused. New layers go after the one
    before (the first after VAST's selected layer)."""
    record_path = Path(out) / RECORD_FILE
    record = _read_record(record_path)
    key = f"{client.host}:{client.port}"
    loaded = record.get(key, {}) if isinstance(record.get(key), dict) else {}
    names = client.get_layer_names()
    layers: list[int] = []
    reused: list[bool] = []
    for path, name in zip(descriptors, layer_names, strict=True):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        before = loaded.get(path.name)
        nr, ref = None, layers[-1] if layers else -1
        if isinstance(before, dict) and before.get("layer_name") == name \
                and before.get("vast_name") in names:
            nr = names.index(before["vast_name"])
            if before.get("sha256") != digest:  # e.g. new mip levels: load it afresh there
                client.remove_layer(nr)
                ref = layers[-1] if layers else nr - 1
                nr = None
        reused.append(nr is not None)
        if nr is None:
            nr = _load(client, path, ref)
            names = client.get_layer_names()
            loaded[path.name] = {"layer_name": name, "sha256": digest,
                                 "vast_name": names[nr] if nr < len(names) else name}
        layers.append(nr)
    record[key] = loaded
    write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    return layers, reused


def reload_layers(client: VastClient, layers: list[int], descriptors: list[Path]) -> list[int]:
    """Remove each layer and load its descriptor again at the same place, so VAST rereads
    every tile (for a VAST without REFRESHLAYERREGION); returns the new layer numbers."""
    out = []
    for nr, path in zip(layers, descriptors, strict=True):
        client.remove_layer(nr)
        out.append(_load(client, Path(path), nr - 1))
    return out


def _load(client: VastClient, path: Path, ref: int) -> int:
    """LOADLAYER of ``path``; a refusal names the usual cause and its fix."""
    try:
        return client.load_layer(str(path.resolve()), ref)
    except VastError as exc:
        if exc.code != 32:
            raise
        raise ValueError(f"VAST could not load {path.resolve()} (error 32): VAST must be able "
                         f"to read that folder; with `membrane serve`, start it with "
                         f"--allow-load {path.resolve().parent}") from exc


class LayerRefresher:
    """Asks VAST to reread regions of the loaded layers as tiles land (thread-safe).

    Boxes are mip 0 (as REFRESHLAYERREGION takes them, clipped to ``shape0``); ``add``
    merges them into one bounding box that is sent when ``interval`` seconds have passed
    since the last refresh, ``flush`` sends what is pending now. Counts the requests sent.
    A VAST that fails or goes away stops the refreshing, not the prediction: ``error``
    keeps what happened, for a warning. With ``reload`` (layer numbers -> new layer
    numbers, e.g. :func:`reload_layers` of the descriptors), a VAST that answers
    REFRESHLAYERREGION with error 1 gets its layers reloaded instead, from then on
    (``reloading``).
    """

    def __init__(self, client: VastClient, layers: list[int], shape0: tuple[int, int, int],
                 interval: float = 1.0,
                 reload: Callable[[list[int]], list[int]] | None = None) -> None:
        self.client, self.layers, self.shape0 = client, list(layers), shape0
        self.interval = interval
        self.reload = reload
        self.reloading = False
        self.sent = 0
        self.error: str | None = None
        self._pending: Box | None = None
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, box0: Box) -> None:
        box0 = box0.clip(self.shape0)
        if box0.empty:
            return
        with self._lock:
            self._pending = box0 if self._pending is None else self._pending.union(box0)
            due = time.monotonic() - self._last >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            box, self._pending = self._pending, None
            self._last = time.monotonic()
        if box is None or self.error is not None:
            return
        try:
            if not self.reloading:
                try:
                    for nr in self.layers:
                        self.client.refresh_layer_region(nr, box)
                        self.sent += 1
                    return
                except VastError as exc:
                    if exc.code != 1 or self.reload is None:
                        raise
                    self.reloading = True
            self.layers = self.reload(self.layers)
            self.sent += len(self.layers)
        except (VastError, ConnectionError) as exc:
            self.error = str(exc)
