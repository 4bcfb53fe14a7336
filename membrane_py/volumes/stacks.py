"""Image stacks as volumes: a folder of PNG/TIFF sections, or one multi-page TIFF.

Sections are read lazily, one at a time, through a small LRU cache. Label images stored as
RGB are turned into ids by :func:`membrane_py.codes.rgb_to_ids` (as mEMbrain and VAST exports do).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import tifffile

from membrane_py.codes import read_png, rgb_to_ids
from membrane_py.geometry import Box
from membrane_py.volumes.base import VolumeSource

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_SECTION_CACHE = 32


def natural_key(name: str) -> list:
    """Sort key comparing digit runs by value: '2.png' < '10.png'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_sections(folder: str | Path) -> list[Path]:
    """The image files of a folder in natural order (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = [p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return sorted(files, key=lambda p: natural_key(p.name))


def read_image(path: str | Path) -> np.ndarray:
    """One 2D image as (y, x) or (y, x, 3) RGB, in its stored dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}; check the path")
    if path.suffix.lower() in (".tif", ".tiff"):
        img = tifffile.imread(path)
    else:
        img = read_png(path)
        if img is None:
            raise ValueError(f"cannot decode image {path}: it is not a PNG, TIFF or other image "
                             "file OpenCV reads")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"{path}: expected a grayscale or RGB 2D image, got shape {img.shape}")
    return img


def _as_section(img: np.ndarray, is_label: bool) -> np.ndarray:
    """Labels: RGB -> ids; EM: keep grayscale or RGB as stored."""
    if is_label and img.ndim == 3:
        return rgb_to_ids(img)
    return img


class ImageFolderVolume(VolumeSource):
    """A folder of same-sized PNG/TIFF sections, z in natural file-name order."""

    def __init__(self, folder: str | Path, voxel_size: tuple[float, float, float] = (1, 1, 1),
                 is_label: bool = False, name: str | None = None) -> None:
        self.folder = Path(folder)
        self.files = list_sections(self.folder)
        self.is_label = is_label
        self.name = name or self.folder.name
        self._voxel_size = tuple(float(v) for v in voxel_size)
        self._read_section = functools.lru_cache(maxsize=_SECTION_CACHE)(self._load)
        first = self._read_section(0)
        self._yx, self._dtype = first.shape[:2], first.dtype
        self._channels = 3 if first.ndim == 3 else 1
        for path in self.files[1:]:
            size = _image_size(path)
            if size is not None and size != self._yx:
                raise ValueError(f"{path} is {size[1]}x{size[0]} (width x height) but "
                                 f"{self.files[0].name} is {self._yx[1]}x{self._yx[0]}: "
                                 "all sections of a stack must share one size")

    def _load(self, z: int) -> np.ndarray:
        img = _as_section(read_image(self.files[z]), self.is_label)
        if z and (img.shape[:2] != self._yx or img.dtype != self._dtype):
            raise ValueError(f"{self.files[z]} has shape {img.shape} {img.dtype}, unlike the first "
                             f"section {self.files[0].name} ({self._yx} {self._dtype})")
        return img

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.files), *self._yx)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self._voxel_size

    def _read(self, box: Box) -> np.ndarray:
        return np.stack([self._read_section(z)[box.y0:box.y1, box.x0:box.x1]
                         for z in range(box.z0, box.z1)])


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file header without decoding pixels (None if unknown)."""
    try:
        if path.suffix.lower() == ".png":
            with open(path, "rb") as f:
                head = f.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
            return None
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.pages[0].shape[:2])
    except (OSError, ValueError, IndexError):
        return None


def is_volume_shape(shape: tuple) -> bool:
    """(z, y, x) or RGB (z, y, x, 3)."""
    return len(shape) == 3 or (len(shape) == 4 and shape[3] == 3)


class ArrayLikeVolume(VolumeSource):
    """Any lazily sliceable (z, y, x[, 3]) array (memmap, h5py dataset, zarr array)."""

    def __init__(self, data, voxel_size: tuple[float, float, float], is_label: bool,
                 name: str) -> None:
        if not is_volume_shape(data.shape):
            raise ValueError(f"{name}: expected a (z, y, x) or (z, y, x, 3) array, "
                             f"got {data.shape}")
        self.data = data
        self.is_label = is_label
        self.name = name
        self._voxel_size = tuple(float(v) for v in voxel_size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def channels(self) -> int:
        return 1 if self.data.ndim == 3 else 3

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self._voxel_size

    def _read(self, box: Box) -> np.ndarray:
        return np.ascontiguousarray(self.data[box.slices()])


def _description_json(path: Path) -> dict:
    """The first page's ImageDescription when it is a JSON object (as membrane-py writes)."""
    import json

    with tifffile.TiffFile(path) as tif:
        text = tif.pages[0].description if tif.pages else ""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class TiffVolume(ArrayLikeVolume):
    """A multi-page TIFF (pages = sections), memory-mapped when its layout allows."""

    def __init__(self, path: str | Path, voxel_size: tuple[float, float, float] | None = None,
                 is_label: bool = False, name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TIFF file not found: {self.path}")
        try:
            data = tifffile.memmap(self.path, mode="r")
        except (ValueError, OSError):
            data = tifffile.imread(self.path)  # compressed or tiled: decode once
        if data.ndim == 2:
            data = data[None]
        if data.ndim == 4 and data.shape[3] == 4:
            data = data[..., :3]
        if data.ndim == 4 and is_label:
            data = rgb_to_ids(np.asarray(data))
        #: the JSON object in the first page's description, if any (what wrote it)
        self.metadata = _description_json(self.path)
        recorded = self.metadata.get("voxel_size_zyx")  # mip 0, written by membrane-py
        if isinstance(recorded, list) and len(recorded) == 3:  # -> that of the stored mip
            f = 2 ** int(self.metadata.get("mip", 0))
            recorded = (float(recorded[0]), float(recorded[1]) * f, float(recorded[2]) * f)
        else:
            recorded = None
        self.voxel_size_known = bool(voxel_size or recorded)
        super().__init__(data, voxel_size or recorded or (1.0, 1.0, 1.0), is_label,
                         name or self.path.stem)
