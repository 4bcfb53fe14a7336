"""OME-Zarr 0.4 multiscale images on zarr format 2: the one layout membrane-py writes zarr in.

A group holds levels ``"0"``, ``"1"``, ... (level i is 2**i times coarser in y and x than
level 0; z is never downsampled) as arrays (z, y, x), or (c, z, y, x) with channels,
chunked one section by one tile, with ``/`` chunk keys. Its ``.zattrs`` carry one
``multiscales`` entry: version "0.4", axes [c,] z, y, x (space axes in nanometer), and per
level a ``scale`` = the level's voxel size (plus a ``translation`` where the array starts
inside a larger volume). ``metadata`` says what wrote it, the mip of level 0 and any
caller attributes. Predictions and instance segmentations both write through
:func:`open_multiscale`; :class:`~membrane_py.volumes.zarrvol.ZarrVolume` reads both back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from membrane_py.geometry import size_at_mip

OME_VERSION = "0.4"
UNIT = "nanometer"


def level_voxel_size(voxel_size: Sequence[float], mip: int) -> list[float]:
    """(z, y, x) voxel size in nm at ``mip`` from the mip-0 one: y and x double per mip."""
    vz, vy, vx = (float(v) for v in voxel_size)
    return [vz, vy * 2 ** mip, vx * 2 ** mip]


def multiscales(name: str, n_levels: int, voxel_size: Sequence[float], mip: int = 0, *,
                channels: bool = False, labels: bool = False,
                origin: Sequence[int] | None = None, metadata: dict | None = None) -> list[dict]:
    """The ``multiscales`` attribute for ``n_levels`` levels whose level 0 is ``mip`` of a
    volume with mip-0 ``voxel_size`` (z, y, x) nm; ``origin`` is the (z, y, x) voxel of
    level 0 where the array starts (default: the volume's corner, no translation)."""
    axes = ([{"name": "c", "type": "channel"}] if channels else []) + \
        [{"name": a, "type": "space", "unit": UNIT} for a in "zyx"]
    lead = [1.0] if channels else []
    datasets = []
    for i in range(n_levels):
        transforms = [{"type": "scale", "scale": lead + level_voxel_size(voxel_size, mip + i)}]
        if origin is not None:
            step = level_voxel_size(voxel_size, mip)
            transforms.append({"type": "translation",
                               "translation": lead + [o * s for o, s in zip(origin, step,
                                                                            strict=True)]})
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    return [{"version": OME_VERSION, "name": name, "axes": axes, "datasets": datasets,
             "type": "nearest" if labels else "mean",
             "metadata": {"description": "written by membrane-py", "mip": mip,
                          **(metadata or {})}}]


def open_multiscale(path: str | Path, shape: tuple[int, int, int], n_levels: int, dtype,
                    voxel_size: Sequence[float], mip: int = 0, *, tile: int = 1024,
                    channels: int = 1, name: str = "", labels: bool = False,
                    origin: Sequence[int] | None = None, metadata: dict | None = None) -> list:
    """Create (or reopen, to resume) an OME-Zarr group at ``path`` and return its level
    arrays; level 0 has ``shape`` (z, y, x) at ``mip``. Unwritten voxels read 0.

    Reopening checks each level's shape and dtype and raises ValueError when they differ
    (the store holds something else); the metadata is rewritten.
    """
    import zarr

    root = zarr.open_group(str(path), mode="a", zarr_format=2)
    arrays = []
    for i in range(n_levels):
        level = size_at_mip(shape, i)
        lead = (channels,) if channels > 1 else ()
        chunks = lead + (1, min(tile, level[1]) or 1, min(tile, level[2]) or 1)
        try:
            arrays.append(root.require_array(
                str(i), shape=lead + level, chunks=chunks, dtype=dtype, fill_value=0,
                chunk_key_encoding={"name": "v2", "separator": "/"}))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} holds other data ({exc}); write into a new output or "
                             "delete it") from exc
    root.attrs["multiscales"] = multiscales(name, n_levels, voxel_size, mip,
                                            channels=channels > 1, labels=labels,
                                            origin=origin, metadata=metadata)
    return arrays


def reopen_multiscale(path: str | Path, n_levels: int) -> list:
    """The level arrays of an existing group made by :func:`open_multiscale`, opened for
    writing without touching its metadata: for writers in other processes (Dask workers),
    each writing its own chunks while the owner keeps the metadata."""
    import zarr

    try:
        return [zarr.open_array(str(Path(path) / str(i)), mode="r+", zarr_format=2)
                for i in range(n_levels)]
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{path} is not a complete multiscale group of {n_levels} levels "
                         f"({exc}); rerun the job to recreate it") from exc
