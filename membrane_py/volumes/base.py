"""The VolumeSource interface every data source implements, and an in-memory array source.

A source has a mip-0 shape (z, y, x), a dtype, a voxel size in nm (z, y, x), a number of mip
levels, and ``read(box, mip)`` returning a C-order array shaped like the box (plus a trailing
channel axis for RGB). Mip m halves x and y m times: EM is averaged over 2^m x 2^m blocks,
labels take the top-left voxel of each block, so ids are never blended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from membrane_py.events import ProgressCallback, warn
from membrane_py.geometry import Box, size_at_mip

MIN_MIP_SIZE = 16  # a mip level exists while its smaller xy side keeps at least this many voxels


def default_n_mips(shape: tuple[int, int, int]) -> int:
    """Mip levels (counting mip 0) until the smaller xy side would drop below MIN_MIP_SIZE."""
    n, side = 1, min(shape[1], shape[2])
    while (side >> n) >= MIN_MIP_SIZE:
        n += 1
    return n


def downsample_xy(data: np.ndarray, factor: int, labels: bool) -> np.ndarray:
    """Shrink axes 1 and 2 (y, x) by an integer factor; a partial last block is dropped.

    EM: rounded block mean in the input dtype. Labels: the block's top-left voxel.
    """
    if factor == 1:
        return data
    ny, nx = data.shape[1] // factor, data.shape[2] // factor
    if labels:
        return np.ascontiguousarray(data[:, : ny * factor : factor, : nx * factor : factor])
    cropped = data[:, : ny * factor, : nx * factor]
    blocks = cropped.reshape(data.shape[0], ny, factor, nx, factor, *data.shape[3:])
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    if np.issubdtype(data.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(data.dtype)


class VolumeSource(ABC):
    """A 3D image or label volume readable box by box at any of its mip levels."""

    #: shown in layer lists and error messages
    name: str = "volume"
    #: True for label/segmentation volumes (nearest-neighbour downsampling)
    is_label: bool = False
    #: False when the data carry no voxel size and none was given (``voxel_size`` is then a
    #: 1 nm placeholder that outputs should not record silently; see :func:`output_voxel_size`)
    voxel_size_known: bool = True

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """Mip-0 size (z, y, x)."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """Voxel type (uint8 EM, uint16/uint32 labels, ...)."""

    @property
    def channels(self) -> int:
        """1 for grayscale/labels, 3 for RGB (then arrays carry a trailing channel axis)."""
        return 1

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel size in nm, (z, y, x)."""
        return (1.0, 1.0, 1.0)

    @property
    def n_mips(self) -> int:
        """Number of mip levels, counting mip 0."""
        return default_n_mips(self.shape)

    def shape_at(self, mip: int) -> tuple[int, int, int]:
        self._check_mip(mip)
        return size_at_mip(self.shape, mip)

    def read(self, box: Box, mip: int = 0) -> np.ndarray:
        """Voxels of ``box`` (coordinates at ``mip``), shaped (z, y, x[, c])."""
        full = Box.full(self.shape_at(mip))
        if not full.contains(box):
            raise IndexError(
                f"{self.name}: box {box} lies outside the volume {full.shape} at mip {mip}")
        if mip == 0:
            return self._read(box)
        return downsample_xy(self._read(box.to_mip0(mip)), 1 << mip, self.is_label)

    @abstractmethod
    def _read(self, box: Box) -> np.ndarray:
        """Voxels of a mip-0 box that is already known to lie inside the volume."""

    def _check_mip(self, mip: int) -> None:
        if not 0 <= mip < self.n_mips:
            raise IndexError(f"{self.name}: mip {mip} out of range 0..{self.n_mips - 1}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, shape={self.shape}, "
                f"dtype={np.dtype(self.dtype).name}, voxel_size={self.voxel_size})")


def output_voxel_size(volume: VolumeSource, voxel_size_xyz=None,
                      progress: ProgressCallback | None = None,
                      task: str = "") -> tuple[float, float, float]:
    """The (z, y, x) nm voxel size to record in what a job writes from ``volume``.

    ``voxel_size_xyz`` (the user's ``--voxel-size X Y Z``, VAST's order) wins; otherwise the
    volume's own. A volume without voxel size metadata gets a one-line warning that asks
    for ``--voxel-size`` instead of 1 nm being written silently.
    """
    if voxel_size_xyz is not None:
        x, y, z = (float(v) for v in voxel_size_xyz)
        return (z, y, x)
    if not volume.voxel_size_known:
        warn(progress, f"{volume.name} has no voxel size metadata, so 1 x 1 x 1 nm is written "
             "into the outputs; pass --voxel-size X Y Z (nm, VAST's x, y, z order, e.g. "
             "--voxel-size 4 4 40)", task)
    return tuple(float(v) for v in volume.voxel_size)


def check_voxel_size(values) -> None:
    """A ``voxel_size`` job field: None or three positive numbers (nm)."""
    if values is not None and (len(values) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in values)):
        raise ValueError(f"voxel_size must be three positive numbers (nm), got {values}")


class ArrayVolume(VolumeSource):
    """A numpy array (z, y, x[, c]) as a volume source."""

    def __init__(
        self,
        array: np.ndarray,
        voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0),
        name: str = "array",
        is_label: bool = False,
    ) -> None:
        if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3)):
            raise ValueError(
                f"expected an array shaped (z, y, x) or (z, y, x, 3), got {array.shape}")
        self.array = np.ascontiguousarray(array)
        self._voxel_size = tuple(float(v) for v in voxel_size)
        self.name = name
        self.is_label = is_label

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[:3])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def channels(self) -> int:
        return 1 if self.array.ndim == 3 else self.array.shape[3]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self._voxel_size

    def _read(self, box: Box) -> np.ndarray:
        return np.ascontiguousarray(self.array[box.slices()])
