"""HDF5 datasets as volumes, including gzip-compressed ``.h5.gz`` files.

An ``.h5.gz`` is decompressed once into the user cache (``$XDG_CACHE_HOME`` or ``~/.cache``,
``membrane-py/gunzip/``), named by the source's sha256 prefix, so later opens are instant.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import h5py

from membrane_py.atomic import atomic_path
from membrane_py.volumes.stacks import ArrayLikeVolume, is_volume_shape

PREFERRED_DATASET = "stack"


def cache_dir() -> Path:
    """Where decompressed copies live."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "membrane-py" / "gunzip"


def gunzip_cached(path: str | Path) -> Path:
    """Decompressed copy of a gzip file in the cache (made atomically on first use)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    out = cache_dir() / f"{digest.hexdigest()[:16]}_{name}"
    if out.exists():
        return out
    with atomic_path(out) as tmp, open(tmp, "wb") as dst, gzip.open(path, "rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)
    return out


def list_datasets(f: h5py.File) -> dict[str, tuple]:
    """Every dataset path in an HDF5 file with its shape."""
    found: dict[str, tuple] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj.shape)
                 if isinstance(obj, h5py.Dataset) else None)
    return found


def pick_dataset(found: dict[str, tuple], where: str) -> str:
    """'stack' when present, else the only 3D (or z,y,x,3) dataset; else a listing error."""
    if PREFERRED_DATASET in found:
        return PREFERRED_DATASET
    volumes = [n for n, s in found.items() if is_volume_shape(s)]
    if len(volumes) == 1:
        return volumes[0]
    listing = ", ".join(f"{n} {s}" for n, s in found.items()) or "none"
    raise ValueError(f"{where}: cannot choose a dataset, name one as '{where}:<dataset>'; "
                     f"datasets: {listing}")


class Hdf5Volume(ArrayLikeVolume):
    """One dataset of an HDF5 file (``.h5``, ``.hdf5`` or gzip-compressed ``.h5.gz``)."""

    def __init__(self, path: str | Path, dataset: str | None = None,
                 voxel_size: tuple[float, float, float] = (1, 1, 1), is_label: bool = False,
                 name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"HDF5 file not found: {self.path}")
        local = gunzip_cached(self.path) if self.path.name.endswith(".gz") else self.path
        self.file = h5py.File(local, "r")
        found = list_datasets(self.file)
        if dataset is None:
            dataset = pick_dataset(found, str(self.path))
        elif dataset.strip("/") not in found:
            raise ValueError(f"{self.path} has no dataset {dataset!r}; datasets: "
                             + ", ".join(f"{n} {s}" for n, s in found.items()))
        self.dataset = dataset.strip("/")
        super().__init__(self.file[self.dataset], voxel_size, is_label,
                         name or f"{self.path.name}:{self.dataset}")

    def close(self) -> None:
        self.file.close()
