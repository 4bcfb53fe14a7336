"""A volume that holds one box of a larger volume, placed where it belongs.

`membrane instances --box` writes only the processed box (zarr or TIFF) and records where
it lies: ``volume_shape_zyx`` (the mip-0 size of the whole volume), ``box_zyx`` (half-open
``z0, z1, y0, y1, x0, x1`` at ``mip``) and ``mip``. :func:`placed` turns such a file into a
volume of the whole size that reads 0 outside the box, so it pastes into VAST (`membrane
paint --mode labels`) at the box it came from.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from membrane_py.geometry import Box, size_at_mip
from membrane_py.volumes.base import VolumeSource

#: the metadata keys that record a placement
PLACEMENT_KEYS = ("volume_shape_zyx", "box_zyx", "mip")


def placement_attrs(volume_shape: tuple[int, int, int], box: Box, mip: int) -> dict:
    """What a writer records so that :func:`placed` can put ``box`` (at ``mip``) back."""
    return {"volume_shape_zyx": [int(v) for v in volume_shape],
            "box_zyx": [box.z0, box.z1, box.y0, box.y1, box.x0, box.x1], "mip": int(mip)}


class PlacedVolume(VolumeSource):
    """``inner`` holds ``box`` (at ``mip``) of a mip-0 volume shaped ``shape0``; everything
    else reads 0. Reads at ``mip`` copy; other mips resample as labels or EM would."""

    def __init__(self, inner: VolumeSource, shape0: tuple[int, int, int], box: Box,
                 mip: int) -> None:
        if inner.shape != box.shape:
            raise ValueError(f"{inner.name}: data shaped {inner.shape} do not fill its recorded "
                             f"box {box} (shape {box.shape})")
        if not Box.full(size_at_mip(shape0, mip)).contains(box):
            raise ValueError(f"{inner.name}: recorded box {box} at mip {mip} lies outside the "
                             f"recorded volume {tuple(shape0)}")
        self.inner, self.box, self.mip = inner, box, mip
        self._shape = tuple(int(v) for v in shape0)
        self.name, self.is_label = inner.name, inner.is_label
        self.voxel_size_known = inner.voxel_size_known

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self.inner.dtype

    @property
    def channels(self) -> int:
        return self.inner.channels

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Mip-0 voxel size (the stored data's x and y are ``2**mip`` times coarser)."""
        vz, vy, vx = self.inner.voxel_size
        f = 1 << self.mip
        return (vz, vy / f, vx / f)

    @property
    def box_mip0(self) -> Box:
        """The recorded box in mip-0 voxels (clipped to the volume)."""
        return self.box.to_mip0(self.mip).clip(self.shape)

    def _at_data_mip(self, box: Box) -> np.ndarray:
        """Voxels of ``box`` (at the data's mip): the stored part, zeros around it."""
        out = np.zeros(box.shape + ((3,) if self.channels == 3 else ()), self.dtype)
        part = box.intersect(self.box)
        if not part.empty:
            out[part.relative_to(box).slices()] = self.inner.read(part.relative_to(self.box), 0)
        return out

    def read(self, box: Box, mip: int = 0) -> np.ndarray:
        if mip == self.mip:
            full = Box.full(self.shape_at(mip))
            if not full.contains(box):
                raise IndexError(f"{self.name}: box {box} lies outside the volume "
                                 f"{full.shape} at mip {mip}")
            return self._at_data_mip(box)
        return super().read(box, mip)

    def _read(self, box: Box) -> np.ndarray:
        if self.mip == 0:
            return self._at_data_mip(box)
        f = 1 << self.mip
        cover = box.to_mip(self.mip)
        data = self._at_data_mip(cover)
        data = np.repeat(np.repeat(data, f, axis=1), f, axis=2)
        y0, x0 = box.y0 - cover.y0 * f, box.x0 - cover.x0 * f
        return np.ascontiguousarray(data[:, y0:y0 + box.shape[1], x0:x0 + box.shape[2]])


def placed(volume: VolumeSource, metadata: Mapping | None) -> VolumeSource:
    """``volume`` placed in the whole volume its ``metadata`` records (see module
    docstring), or ``volume`` itself when nothing is recorded."""
    if not metadata or not all(k in metadata for k in PLACEMENT_KEYS):
        return volume
    try:
        shape0 = tuple(int(v) for v in metadata["volume_shape_zyx"])
        box = Box(*(int(v) for v in metadata["box_zyx"]))
        mip = int(metadata["mip"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{volume.name}: unreadable placement metadata ({exc})") from None
    if len(shape0) != 3:
        raise ValueError(f"{volume.name}: volume_shape_zyx must hold three numbers")
    return PlacedVolume(volume, shape0, box, mip)
