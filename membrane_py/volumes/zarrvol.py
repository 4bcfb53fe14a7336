"""Zarr arrays (v2 or v3 on disk) as volumes, read chunk by chunk on demand."""

from __future__ import annotations

from pathlib import Path

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


class ZarrVolume(ArrayLikeVolume):
    """A zarr array, or one array of a zarr group (``array``; by default its only 3D one)."""

    def __init__(self, path: str | Path, array: str | None = None,
                 voxel_size: tuple[float, float, float] = (1, 1, 1), is_label: bool = False,
                 name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"zarr store not found: {self.path}")
        node = zarr.open(str(self.path), mode="r")
        if isinstance(node, zarr.Group):
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
        super().__init__(node, voxel_size, is_label, name or label)
