"""mEMbrain-compatible PNG tile stacks: a writer with resume and mip pyramid, and a reader.

Layout: ``<out>/mip<m>/Sect_<zzzzzz>/sect_<zzzzzz>_r<row>_c<col>.png``, 1024 x 1024 tiles,
rows and columns 0-based at mip m, edge tiles zero-padded to full size. A ``.vsvi``
descriptor next to the tiles lets VAST (and :class:`VsviVolume`) load them as a layer.

Section numbers in file names are z indices of the full volume. The descriptor always
covers the whole volume: sections ``SourceMinS`` = 0 .. ``SourceMaxS`` = depth - 1, every
row and column, and ``OffsetX/Y/Z`` = 0, so VAST's z index k shows file section k
whichever way it reads ``OffsetZ`` (the protocol notes leave its meaning open, and
z index 0 is ``SourceMinS``). Tiles not (yet) written read as black
(``MissingImagePolicy``). A box or anchor run therefore lands where it was predicted, and
its descriptor stays the same from run to run, so a layer VAST loaded once only needs
refreshing. :class:`VsviVolume` reads z as ``section_numbers[z - OffsetZ]``, which also
places descriptors of other writers that shift by ``OffsetZ``. A writer at mip m > 0
writes no mip-0 tiles: its
descriptor keeps the mip-0 template (missing tiles read as black) and says
``SourceMinM`` = m, so readers find the data through the mipmap template at mip m and up.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from membrane_py.codes import read_png, write_png
from membrane_py.geometry import Box, size_at_mip
from membrane_py.vastapi.descriptors import Vsvi, format_tile_path, read_vsvi, write_vsvi
from membrane_py.volumes.base import VolumeSource, downsample_xy

TILE_SIZE = 1024
MIP0_TEMPLATE = "mip0/Sect_%06d/sect_%06d_r%d_c%d.png"
MIPMAP_TEMPLATE = "mip%d/Sect_%06d/sect_%06d_r%d_c%d.png"
_TILE_CACHE = 64
_SECT_DIR = re.compile(r"Sect_(\d+)$")
_MIP_DIR = re.compile(r"mip(\d+)$")
#: PNG signature and IHDR chunk start, and the IEND chunk every complete PNG ends with
_PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def tile_path(out_dir: str | Path, mip: int, z: int, row: int, col: int) -> Path:
    """File of one tile in the mEMbrain layout."""
    return Path(out_dir) / f"mip{mip}" / f"Sect_{z:06d}" / f"sect_{z:06d}_r{row}_c{col}.png"


def remove_stale_temporaries(out_dir: str | Path) -> int:
    """Delete the hidden ``.*.tmp`` files a killed writer left below ``out_dir``; call it
    before (not while) a job writes there. Returns how many were removed."""
    stale = list(Path(out_dir).glob("mip*/Sect_*/.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _levels(out_dir: Path) -> list[int]:
    """Mip levels that have a folder with at least one section in it."""
    levels = []
    for d in out_dir.glob("mip*"):
        m = _MIP_DIR.match(d.name)
        if m and d.is_dir() and _sections(d):
            levels.append(int(m.group(1)))
    return sorted(levels)


def _sections(level_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for d in level_dir.iterdir()
                  if (m := _SECT_DIR.match(d.name)) and d.is_dir())


class TileWriter:
    """Writes blocks of one mip level as tiles; builds the pyramid above it; writes the .vsvi."""

    def __init__(self, out_dir: str | Path, volume_shape: tuple[int, int, int], mip: int = 0,
                 tile: int = TILE_SIZE, channels: int = 1, dtype=np.uint8) -> None:
        if channels not in (1, 3):
            raise ValueError(f"tiles have 1 (grayscale) or 3 (RGB) channels, not {channels}")
        self.out_dir = Path(out_dir)
        self.volume_shape = tuple(int(s) for s in volume_shape)
        self.mip, self.tile, self.channels = mip, tile, channels
        self.dtype = np.dtype(dtype)
        self.shape = size_at_mip(self.volume_shape, mip)

    def grid(self, mip: int | None = None) -> tuple[int, int]:
        """(rows, cols) of tiles at a mip level (the writer's by default)."""
        _, h, w = size_at_mip(self.volume_shape, self.mip if mip is None else mip)
        return math.ceil(h / self.tile), math.ceil(w / self.tile)

    def _tile_shape(self) -> tuple[int, ...]:
        return (self.tile, self.tile) + ((3,) if self.channels == 3 else ())

    def write_block(self, box: Box, data: np.ndarray) -> None:
        """Write every tile of ``box`` (writer's mip); the box must be tile-aligned in y and x."""
        _, h, w = self.shape
        if not Box.full(self.shape).contains(box):
            raise ValueError(f"box {box} lies outside the volume {self.shape} at mip {self.mip}")
        for axis, start, end, size in (("y", box.y0, box.y1, h), ("x", box.x0, box.x1, w)):
            if start % self.tile:
                raise ValueError(f"box {axis} start {start} is not a multiple of the tile "
                                 f"size {self.tile}")
            if end % self.tile and end != size:
                raise ValueError(f"box {axis} end {end} is neither a multiple of the tile size "
                                 f"{self.tile} nor the volume edge {size} at mip {self.mip}")
        expected = box.shape + ((3,) if self.channels == 3 else ())
        if data.shape != expected:
            raise ValueError(f"data shape {data.shape} does not match box shape {expected}")
        data = data.astype(self.dtype, copy=False)
        t = self.tile
        for iz, z in enumerate(range(box.z0, box.z1)):
            for y in range(box.y0, box.y1, t):
                for x in range(box.x0, box.x1, t):
                    part = data[iz, y - box.y0:min(y + t, box.y1) - box.y0,
                                x - box.x0:min(x + t, box.x1) - box.x0]
                    self.write_tile(self.mip, z, y // t, x // t, part)

    def write_tile(self, mip: int, z: int, row: int, col: int, part: np.ndarray) -> np.ndarray:
        """Write one tile (``part`` is its top-left corner, zero-padded); returns the tile."""
        full = np.zeros(self._tile_shape(), self.dtype)
        full[:part.shape[0], :part.shape[1]] = part
        write_png(tile_path(self.out_dir, mip, z, row, col), full)
        return full

    def exists_valid(self, z: int, row: int, col: int, mip: int | None = None) -> bool:
        """True when the tile is a complete PNG of the right size and pixel kind (resume).

        Reads only the header and the trailer: writes are atomic, so a file under its final
        name is either whole or was damaged afterwards, which a truncated end reveals.
        """
        path = tile_path(self.out_dir, self.mip if mip is None else mip, z, row, col)
        try:
            with open(path, "rb") as f:
                head = f.read(26)
                f.seek(-len(_PNG_END), os.SEEK_END)
                tail = f.read()
        except OSError:  # missing, or shorter than a trailer
            return False
        expected = (self.tile, self.tile, 8 * self.dtype.itemsize, 0 if self.channels == 1 else 2)
        return (head[:16] == _PNG_HEAD and tail == _PNG_END
                and struct.unpack(">IIBB", head[16:26]) == expected)

    def top_mip(self) -> int:
        """The first level (from the writer's mip up) whose whole image fits one tile."""
        top = self.mip
        while max(self.grid(top)) > 1:
            top += 1
        return top

    def build_parent(self, level: int, z: int, row: int, col: int,
                     labels: bool = False) -> np.ndarray | None:
        """Make tile (z, row, col) of ``level + 1`` from its four children at ``level``
        (2x mean, or top-left for labels) and write it; None (nothing written) when no
        child exists."""
        t = self.tile
        quad = np.zeros((1, 2 * t, 2 * t) + self._tile_shape()[2:], self.dtype)
        found = False
        for dr in (0, 1):
            for dc in (0, 1):
                child = read_png(tile_path(self.out_dir, level, z, 2 * row + dr, 2 * col + dc))
                if child is not None:
                    quad[0, dr * t:(dr + 1) * t, dc * t:(dc + 1) * t] = child
                    found = True
        if not found:
            return None
        _, h, w = size_at_mip(self.volume_shape, level + 1)
        small = downsample_xy(quad, 2, labels)[0]
        small[max(0, h - row * t):] = 0  # outside the image at this level
        small[:, max(0, w - col * t):] = 0
        return self.write_tile(level + 1, z, row, col, small)

    def build_pyramid(self, max_mip: int | None = None, labels: bool = False) -> int:
        """Make mip+1 .. max_mip (default :meth:`top_mip`) from every written tile.

        Returns the top level.
        """
        max_mip = self.top_mip() if max_mip is None else max_mip
        for level in range(self.mip, max_mip):
            src = self.out_dir / f"mip{level}"
            if not src.is_dir():
                break
            rows, cols = self.grid(level + 1)
            for z in _sections(src):
                for r in range(rows):
                    for c in range(cols):
                        self.build_parent(level, z, r, c, labels)
        return max_mip

    def write_descriptor(self, path: str | Path, voxel_size: tuple[float, float, float],
                         layer_name: str, missing: str = "black", sections: Iterable[int] = (),
                         top_mip: int | None = None) -> Path:
        """A .vsvi covering the whole volume (see the module docstring) whose mip range
        matches the tiles on disk.

        ``sections`` and ``top_mip`` say what a running job is about to write, so VAST can
        show a layer before its tiles appear (missing tiles read as black).
        """
        path = Path(path)
        levels = [m for m in _levels(self.out_dir) if m >= self.mip]
        planned = set(sections)
        if planned:
            levels = sorted({*levels, self.mip, self.mip if top_mip is None else top_mip})
        if self.mip not in levels:
            raise ValueError(f"no tiles written at mip {self.mip} in {self.out_dir}")
        rows, cols = self.grid(0)
        rel = os.path.relpath(self.out_dir.resolve(), path.parent.resolve()).replace(os.sep, "/")
        prefix = "./" if rel == "." else f"./{rel}/"
        top = max(levels)
        vz, vy, vx = voxel_size
        vsvi = Vsvi(
            comment=f"written by membrane-py (tiles at mip {self.mip})",
            source_file_name_template=prefix + MIP0_TEMPLATE,
            source_param_sequence="ssrc",
            source_min_s=0, source_max_s=self.volume_shape[0] - 1,
            source_min_r=0, source_max_r=rows - 1, source_min_c=0, source_max_c=cols - 1,
            mip_map_file_name_template=prefix + MIPMAP_TEMPLATE,
            mip_map_param_sequence="mssrc",
            source_min_m=self.mip if self.mip > 0 else min(1, top), source_max_m=top,
            source_tile_size_x=self.tile, source_tile_size_y=self.tile,
            source_bytes_per_pixel=self.dtype.itemsize * self.channels,
            missing_image_policy=missing,
            target_data_size_x=self.volume_shape[2], target_data_size_y=self.volume_shape[1],
            target_data_size_z=self.volume_shape[0],
            target_voxel_size_x_nm=float(vx), target_voxel_size_y_nm=float(vy),
            target_voxel_size_z_nm=float(vz),
            target_layer_name=layer_name,
        )
        return write_vsvi(path, vsvi)


class VsviVolume(VolumeSource):
    """An image-tile stack described by a ``.vsvi`` file, read tile by tile (LRU cached)."""

    def __init__(self, path: str | Path, is_label: bool = False) -> None:
        self.path = Path(path)
        self.vsvi = v = read_vsvi(self.path)
        if v.source_bytes_per_pixel not in (1, 2, 3):
            raise ValueError(f"{self.path}: SourceBytesPerPixel {v.source_bytes_per_pixel} "
                             "is not supported (1 = grayscale, 2 = 16-bit, 3 = RGB)")
        self.name = v.target_layer_name or self.path.stem
        self.is_label = is_label
        self._sections = v.section_numbers()
        self._fill = np.iinfo(self.dtype).max if v.missing_image_policy == "white" else 0
        self._decoded = functools.lru_cache(maxsize=_TILE_CACHE)(self._load_tile)

    @property
    def shape(self) -> tuple[int, int, int]:
        v = self.vsvi
        return (v.target_data_size_z, v.target_data_size_y, v.target_data_size_x)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vsvi.source_bytes_per_pixel == 2 else np.uint8)

    @property
    def channels(self) -> int:
        return 3 if self.vsvi.source_bytes_per_pixel == 3 else 1

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        v = self.vsvi
        return (v.target_voxel_size_z_nm, v.target_voxel_size_y_nm, v.target_voxel_size_x_nm)

    def has_tiles(self, mip: int) -> bool:
        """True when tiles exist for ``mip`` (mip 0, or within SourceMinM..SourceMaxM)."""
        v = self.vsvi
        return mip == 0 or (v.mip_map_file_name_template is not None
                            and v.source_min_m <= mip <= v.source_max_m)

    def _file(self, mip: int, section: int, row: int, col: int) -> Path:
        v = self.vsvi
        if mip == 0:
            template, seq = v.source_file_name_template, v.source_param_sequence
        else:
            template, seq = v.mip_map_file_name_template, v.mip_map_param_sequence or "mssrc"
        rel = format_tile_path(template, seq, s=section, r=row, c=col, m=mip)
        return self.path.parent / rel

    def _tile(self, mip: int, section: int, row: int, col: int) -> np.ndarray | None:
        """A decoded tile, cached by file and modification time: tiles that a running job
        writes later, or rewrites, are seen at the next read (missing ones are not cached)."""
        path = self._file(mip, section, row, col)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        return self._decoded(path, stamp)

    def _load_tile(self, path: Path, stamp: int) -> np.ndarray | None:
        img = read_png(path)
        if img is not None and self.channels == 1 and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return img

    def read(self, box: Box, mip: int = 0) -> np.ndarray:
        if mip == 0 or not self.has_tiles(mip):
            return super().read(box, mip)
        full = Box.full(self.shape_at(mip))
        if not full.contains(box):
            raise IndexError(f"{self.name}: box {box} lies outside the volume {full.shape} "
                             f"at mip {mip}")
        return self._read_tiles(box, mip)

    def _read(self, box: Box) -> np.ndarray:
        return self._read_tiles(box, 0)

    def _read_tiles(self, box: Box, mip: int) -> np.ndarray:
        v = self.vsvi
        tx, ty = v.source_tile_size_x, v.source_tile_size_y
        out = np.full(box.shape + ((3,) if self.channels == 3 else ()), self._fill, self.dtype)
        for iz, z in enumerate(range(box.z0, box.z1)):
            k = z - v.offset_z
            if not 0 <= k < len(self._sections):
                continue
            for r in range(box.y0 // ty, -(-box.y1 // ty)):
                for c in range(box.x0 // tx, -(-box.x1 // tx)):
                    img = self._tile(mip, self._sections[k], r + v.source_min_r, c + v.source_min_c)
                    if img is None:
                        continue
                    y0, y1 = max(box.y0, r * ty), min(box.y1, (r + 1) * ty, r * ty + img.shape[0])
                    x0, x1 = max(box.x0, c * tx), min(box.x1, (c + 1) * tx, c * tx + img.shape[1])
                    if y0 < y1 and x0 < x1:
                        out[iz, y0 - box.y0:y1 - box.y0, x0 - box.x0:x1 - box.x0] = \
                            img[y0 - r * ty:y1 - r * ty, x0 - c * tx:x1 - c * tx]
        return out
