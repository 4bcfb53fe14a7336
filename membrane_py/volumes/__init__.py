"""Volume sources: one interface over VAST servers, image stacks, tiles, HDF5, zarr, arrays."""

from membrane_py.volumes.base import ArrayVolume, VolumeSource

__all__ = ["ArrayVolume", "VolumeSource"]
