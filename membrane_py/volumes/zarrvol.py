"""Zarr arrays (v2 or v3 on disk) as volumes, read chunk by chunk on demand.

OME-Zarr groups (:mod:`membrane_py.volumes.omezarr`, as membrane-py writes them) open at
their first level by default, with the voxel size of the level read from its ``scale``;
a (c, z, y, x) image is read as (z, y, x, c).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from membrane_py.volumes.stacks import ArrayLikeVolume, is_volume_shape


def _arrays(group) -> dict[str, tuple]:
    """Array paths in a zarr group (recursively) with their shapes."""
    found: dict[str, tuple] = {}
    for name, arr in group.arrays():
        found[name] = tuple(arr.shape)
    for name, sub in group.groups():
        found.update({f"{name}/{k}": s for k, s in _arrays(sub).items()})
    return found


def _ome_level(group, array: str | None) -> tuple[str, tuple[float, float, float], bool] | None:
    """(array path, (z, y, x) voxel size, channels first) of level ``array`` (default: the
    first) of an OME-Zarr multiscale image; None when ``group`` is no such image or the
    named array is none of its levels."""
    ms = group.attrs.get("multiscales")
    if not ms:
        return None
    axes = [a["name"] for a in ms[0]["axes"]]
    for level in ms[0]["datasets"]:
        if array is None or level["path"] == array.strip("/"):
            scale = next(t["scale"] for t in level["coordinateTransformations"]
                         if t["type"] == "scale")
            return level["path"], tuple(float(v) for v in scale[-3:]), axes[0] == "c"
    return None


class _ChannelsLast:
    """A lazily sliced (c, z, y, x) array seen as (z, y, x, c)."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = (*array.shape[1:], array.shape[0])
        self.dtype = array.dtype
        self.ndim = 4

    def __getitem__(self, key: tuple) -> np.ndarray:
        return np.moveaxis(self.array[(slice(None), *key)], 0, -1)


class ZarrVolume(ArrayLikeVolume):
    """A zarr array, or one array of a zarr group (``array``; by default its only 3D one,
    or level 0 of an OME-Zarr image). ``voxel_size`` (z, y, x) nm overrides the one in
    OME-Zarr metadata; without either it is 1."""

    def __init__(self, path: str | Path, array: str | None = None,
                 voxel_size: tuple[float, float, float] | None = None, is_label: bool = False,
                 name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"zarr store not found: {self.path}")
        node = zarr.open(str(self.path), mode="r")
        stored, channels_first = None, False
        #: the OME-Zarr ``multiscales`` metadata (what wrote it, a recorded placement)
        self.metadata: dict = {}
        if isinstance(node, zarr.Group):
            ms = node.attrs.get("multiscales")
            if ms and isinstance(ms[0].get("metadata"), dict):
                self.metadata = dict(ms[0]["metadata"])
            ome = _ome_level(node, array)
            if ome is not None:
                array, stored, channels_first = ome
            found = _arrays(node)
            if array is None:
                volumes = [n for n, s in found.items() if is_volume_shape(s)]
                if len(volumes) != 1:
                    raise ValueError(f"{self.path}: cannot choose an array, name one as "
                                     f"'{self.path}:<array>'; arrays: "
                                     + (", ".join(f"{n} {s}" for n, s in found.items()) or "none"))
                array = volumes[0]
            elif array.strip("/") not in found:
                raise ValueError(f"{self.path} has no array {array!r}; arrays: "
                                 + ", ".join(f"{n} {s}" for n, s in found.items()))
            node = node[array.strip("/")]
        elif array:
            raise ValueError(f"{self.path} is a single array, it has no array {array!r} inside")
        self.array_name = array
        label = f"{self.path.name}:{array}" if array else self.path.name
        data = _ChannelsLast(node) if channels_first else node
        self.voxel_size_known = bool(voxel_size or stored)
        super().__init__(data, voxel_size or stored or (1.0, 1.0, 1.0), is_label, name or label)
