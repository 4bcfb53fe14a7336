"""What a prediction writes: 8-bit tiles in mEMbrain's layout, their mip pyramid, a
``.vsvi`` per output and, optionally, OME-Zarr copies.

Pixel codes (0 always means "missing", as VAST's black for absent tiles):

- ``probability`` and ``per_class``: the class probability p as ``1 + round(254 p)``
  (1..255, bright = likely; :func:`membrane_py.codes.probability_to_u8`); ``probability``
  writes one class (by default membrane).
- ``classes``: the arg-max class k of K as ``round(255 k / K)`` (K = 2: 128 and 255;
  :func:`membrane_py.codes.classes_to_tile_u8`).
- ``rgb``: the probabilities of the three classes of a 3-class network as R, G, B
  (each coded like ``probability``).
- ``uncertainty``: u in [0, 1], the spread between test-time augmented predictions, or
  without augmentation the binary entropy of the probabilities
  (:meth:`membrane_py.infer.engine.TiledPredictor.predict_with_uncertainty`), coded like a
  probability.

Each output is a folder ``<out>/<name>/mip<m>/...`` with its descriptor ``<out>/<name>.vsvi``
and, with zarr on, ``<out>/<name>.zarr`` (OME-Zarr 0.4, :mod:`membrane_py.volumes.omezarr`:
level ``i`` is mip ``m + i``; a class map is downsampled by nearest neighbour, the rest by mean).
A tile's PNG is written after its zarr copy, so an existing valid PNG means the tile is done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from membrane_py.codes import classes_to_tile_u8, probability_to_u8
from membrane_py.geometry import Box, size_at_mip
from membrane_py.predict.job import PredictJob
from membrane_py.volumes.blocks import TileKey
from membrane_py.volumes.omezarr import open_multiscale, reopen_multiscale
from membrane_py.volumes.tiles import TileWriter, remove_stale_temporaries


def pick_class(spec: str | None, class_names: list[str]) -> int:
    """0-based index of a class given by name or 1-based number; default "membrane", else
    the last class."""
    if spec is None:
        return class_names.index("membrane") if "membrane" in class_names else \
            len(class_names) - 1
    if spec in class_names:
        return class_names.index(spec)
    if spec.isdigit() and 1 <= int(spec) <= len(class_names):
        return int(spec) - 1
    raise ValueError(f"class {spec!r} is not one of the network's classes {class_names}; "
                     f"give a name or a number 1..{len(class_names)}")


@dataclass(frozen=True)
class Output:
    """One written layer: ``kind`` (see job.OUTPUT_KINDS, or ``uncertainty``), folder
    ``name`` and the 0-based classes it shows."""

    kind: str
    name: str
    layer_name: str
    classes: tuple[int, ...]

    @property
    def channels(self) -> int:
        return 3 if self.kind == "rgb" else 1

    @property
    def labels(self) -> bool:
        """Class maps are downsampled by nearest neighbour, never blended."""
        return self.kind == "classes"

    def encode(self, probs: np.ndarray, uncertainty: np.ndarray | None = None) -> np.ndarray:
        """(z, C, y, x) float32 probabilities (and (z, y, x) uncertainty) -> (z, y, x) or
        (z, y, x, 3) uint8 pixels."""
        if self.kind == "uncertainty":
            if uncertainty is None:
                raise ValueError("the uncertainty output needs the engine's uncertainty map")
            return probability_to_u8(uncertainty)
        if self.kind == "classes":
            return classes_to_tile_u8(np.argmax(probs, axis=1) + 1, probs.shape[1])
        if self.kind == "rgb":
            return probability_to_u8(np.moveaxis(probs[:, list(self.classes)], 1, -1))
        return probability_to_u8(probs[:, self.classes[0]])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def make_outputs(job: PredictJob, class_names: list[str]) -> list[Output]:
    """The outputs a job asks for, checked against the network's classes."""
    outs: list[Output] = []
    n = len(class_names)
    for kind in dict.fromkeys(job.outputs):
        if kind == "probability":
            k = pick_class(job.prob_class, class_names)
            outs.append(Output(kind, "probability", job.layer_name, (k,)))
        elif kind == "classes":
            outs.append(Output(kind, "classes", f"{job.layer_name} (classes)", tuple(range(n))))
        elif kind == "rgb":
            if n != 3:
                raise ValueError(f"the rgb output shows exactly 3 classes, the network has {n} "
                                 f"({class_names}); use per_class instead")
            outs.append(Output(kind, "rgb", f"{job.layer_name} (RGB)", (0, 1, 2)))
        else:
            outs += [Output(kind, f"class{k + 1}_{_safe(name)}", f"{job.layer_name} ({name})",
                            (k,)) for k, name in enumerate(class_names)]
    if job.uncertainty:
        outs.append(Output("uncertainty", "uncertainty", f"{job.layer_name} (uncertainty)", ()))
    return outs


class ZarrLevels:
    """One output as an OME-Zarr multiscale group; level i holds mip ``mip + i``."""

    def __init__(self, path: Path, output: Output, shape: tuple[int, int, int], mip: int,
                 n_levels: int, tile: int, voxel_size: tuple[float, float, float],
                 shared: bool = False) -> None:
        self.path, self.tile, self.rgb = path, tile, output.channels == 3
        if shared:  # another process made the group and keeps its metadata
            self.arrays = reopen_multiscale(path, n_levels)
            return
        for stale in path.rglob("*.partial") if path.is_dir() else ():
            stale.unlink(missing_ok=True)  # zarr's half-written chunks of a killed run
        self.arrays = open_multiscale(path, shape, n_levels, "uint8", voxel_size, mip, tile=tile,
                                      channels=output.channels, name=output.layer_name,
                                      labels=output.labels,
                                      metadata={"description": "membrane-py prediction"})

    def write(self, level: int, key: TileKey, tile: np.ndarray) -> None:
        """Store tile (z, row, col) of ``level`` (its top-left part, cropped at the edge)."""
        z, r, c = key
        arr = self.arrays[level]
        h, w = arr.shape[-2:]
        y0, x0 = r * self.tile, c * self.tile
        part = tile[: min(self.tile, h - y0), : min(self.tile, w - x0)]
        if self.rgb:
            arr[:, z, y0:y0 + part.shape[0], x0:x0 + part.shape[1]] = np.moveaxis(part, -1, 0)
        else:
            arr[z, y0:y0 + part.shape[0], x0:x0 + part.shape[1]] = part


class PredictionWriter:
    """Writes every output of one job: tiles, the pyramid above them, zarr and descriptors.

    With ``pyramid`` the levels above ``mip`` go up to the first one that fits a single
    tile (``top_mip``). Not thread-safe: one thread (the runner's writer) owns it.
    ``shared``: the folder is owned by a writer in another process, which made it (zarr
    groups and metadata included) and removed stale temporaries; this one only adds tiles
    (a Dask worker's).
    """

    def __init__(self, out: str | Path, outputs: list[Output], shape0: tuple[int, int, int],
                 mip: int, tile: int, voxel_size: tuple[float, float, float],
                 pyramid: bool, zarr: bool, shared: bool = False) -> None:
        self.out = Path(out)
        self.outputs = outputs
        self.mip, self.tile = mip, tile
        self.voxel_size = voxel_size
        self.tiles = {o.name: TileWriter(self.out / o.name, shape0, mip, tile, o.channels)
                      for o in outputs}
        if not shared:  # what a killed run was writing is redone anyway
            self.remove_temporaries()
        self.top_mip = self.tiles[outputs[0].name].top_mip() if pyramid else mip
        self.zarr = {o.name: ZarrLevels(self.out / f"{o.name}.zarr", o, size_at_mip(shape0, mip),
                                        mip, self.top_mip - mip + 1, tile, voxel_size, shared)
                     for o in outputs} if zarr else {}

    def done(self, key: TileKey, mip: int | None = None) -> bool:
        """True when every output holds a complete tile ``key`` (at ``mip``, default the
        predicted one)."""
        return all(w.exists_valid(*key, mip=mip) for w in self.tiles.values())

    def write(self, core: Box, sections: list[int], probs: np.ndarray,
              keys: list[TileKey], uncertainty: np.ndarray | None = None) -> None:
        """Write tiles ``keys`` from ``probs`` (len(sections), C, y, x) and, for the
        uncertainty output, ``uncertainty`` (len(sections), y, x) over ``core``."""
        index = {z: i for i, z in enumerate(sections)}
        t = self.tile
        for o in self.outputs:
            img = o.encode(probs, uncertainty)
            for key in keys:
                z, r, c = key
                y0, x0 = r * t - core.y0, c * t - core.x0
                part = img[index[z], y0:y0 + t, x0:x0 + t]
                if o.name in self.zarr:
                    self.zarr[o.name].write(0, key, part)
                self.tiles[o.name].write_tile(self.mip, z, r, c, part)

    def build_pyramid(self, keys: list[TileKey], written: set[TileKey]) -> int:
        """Pyramid tiles above ``keys`` (tiles at the predicted mip, e.g. one z block).

        A parent is (re)built when a child was (re)built in this run (``written``) or when
        it is missing, so reruns repair interrupted pyramids and leave finished ones alone.
        Returns the number of parent tiles built.
        """
        level_keys, dirty, built = set(keys), set(written), 0
        for level in range(self.mip, self.top_mip):
            parents = {(z, r // 2, c // 2) for z, r, c in level_keys}
            stale = {(z, r // 2, c // 2) for z, r, c in dirty}
            dirty = set()
            for key in sorted(parents):
                if key not in stale and self.done(key, level + 1):
                    continue
                dirty.add(key)
                for o in self.outputs:
                    tile = self.tiles[o.name].build_parent(level, *key, labels=o.labels)
                    if tile is not None and o.name in self.zarr:
                        self.zarr[o.name].write(level + 1 - self.mip, key, tile)
                built += 1
            level_keys = parents
        return built

    def remove_temporaries(self) -> int:
        """Delete temporaries that writers killed mid-write left (call when none writes)."""
        return sum(remove_stale_temporaries(self.out / o.name) for o in self.outputs)

    def descriptor_path(self, output: Output) -> Path:
        return self.out / f"{output.name}.vsvi"

    def write_descriptors(self, sections: list[int]) -> list[Path]:
        """One ``.vsvi`` per output covering the tiles on disk plus ``sections`` (planned)."""
        return [self.tiles[o.name].write_descriptor(
            self.descriptor_path(o), self.voxel_size, o.layer_name, sections=sections,
            top_mip=self.top_mip) for o in self.outputs]
