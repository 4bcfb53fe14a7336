"""Volume sources: one interface over VAST servers, image stacks, tiles, HDF5, zarr, arrays."""

from membrane_py.volumes.base import ArrayVolume, VolumeSource
from membrane_py.volumes.hdf5 import Hdf5Volume
from membrane_py.volumes.open import open_source, open_volume
from membrane_py.volumes.stacks import ImageFolderVolume, TiffVolume
from membrane_py.volumes.synthetic import SyntheticEM, make_synthetic, synthetic_volumes
from membrane_py.volumes.tiles import TileWriter, VsviVolume, tile_path
from membrane_py.volumes.zarrvol import ZarrVolume

__all__ = [
    "ArrayVolume",
    "Hdf5Volume",
    "ImageFolderVolume",
    "SyntheticEM",
    "TiffVolume",
    "TileWriter",
    "VolumeSource",
    "VsviVolume",
    "ZarrVolume",
    "make_synthetic",
    "open_source",
    "open_volume",
    "synthetic_volumes",
    "tile_path",
]
