"""Open any supported volume from one text spec (CLI arguments, job specs, GUI fields).

:func:`open_source` is what jobs use: it accepts every form including a running VAST and
owns the VAST connection for the lifetime of the ``with`` block. :func:`open_volume` opens
files and the synthetic volume only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from membrane_py.vastapi.address import parse_vast_address
from membrane_py.volumes.base import VolumeSource

if TYPE_CHECKING:
    from membrane_py.vastapi.client import VastClient

ACCEPTED_FORMS = (
    "synthetic | synthetic:ZxYxX | synthetic:ZxYxX:SEED, "
    "a folder of PNG/TIFF sections, a multi-page .tif/.tiff, "
    ".h5/.hdf5/.h5.gz[:dataset], a .zarr directory[:array], a .vsvi descriptor, "
    "vast | vast://HOST:PORT (a running VAST or membrane serve)"
)
_H5 = (".h5", ".hdf5", ".h5.gz", ".hdf5.gz")


def _parse_synthetic(spec: str) -> tuple[tuple[int, int, int], int]:
    parts = spec.split(":")
    shape, seed = (32, 1024, 1024), 0
    try:
        if len(parts) > 1:
            dims = tuple(int(d) for d in parts[1].lower().split("x"))
            if len(dims) != 3:
                raise ValueError
            shape = dims
        if len(parts) > 2:
            seed = int(parts[2])
        if len(parts) > 3:
            raise ValueError
    except ValueError:
        raise ValueError(f"bad synthetic spec {spec!r}; accepted forms: {ACCEPTED_FORMS}") from None
    return shape, seed


def _split_inner(spec: str) -> tuple[Path, str | None]:
    """'file.h5:dataset' -> (file.h5, 'dataset'), split on the last ':' only when the
    part before it exists and the whole spec does not."""
    path = Path(spec)
    if not path.exists() and ":" in spec:
        head, inner = spec.rsplit(":", 1)
        if Path(head).exists() and inner:
            return Path(head), inner
    return path, None


def open_volume(spec: str | Path, *, labels: bool = False,
                voxel_size: tuple[float, float, float] | None = None) -> VolumeSource:
    """A volume source for ``spec`` (see ACCEPTED_FORMS); ``labels`` marks a label volume.

    A zarr or TIFF that records the box it holds (`membrane instances --box`) opens as the
    whole volume, 0 outside that box (:mod:`membrane_py.volumes.placed`)."""
    from membrane_py.volumes.hdf5 import Hdf5Volume
    from membrane_py.volumes.placed import placed
    from membrane_py.volumes.stacks import ImageFolderVolume, TiffVolume
    from membrane_py.volumes.synthetic import synthetic_volumes
    from membrane_py.volumes.tiles import VsviVolume
    from membrane_py.volumes.zarrvol import ZarrVolume

    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        em, gt = synthetic_volumes(*_parse_synthetic(text))
        return gt if labels else em
    if parse_vast_address(text) is not None:
        raise ValueError(f"{text!r} is a running VAST: open it with open_source(), which "
                         "owns the connection")
    path, inner = _split_inner(text)
    if not path.exists():
        raise FileNotFoundError(f"volume not found: {text!r}; accepted forms: {ACCEPTED_FORMS}")
    vs = voxel_size or (1.0, 1.0, 1.0)
    name = path.name.lower()
    if path.is_dir() and (name.endswith(".zarr") or (path / "zarr.json").exists()
                          or (path / ".zarray").exists() or (path / ".zgroup").exists()):
        vol = ZarrVolume(path, inner, voxel_size=voxel_size, is_label=labels)
        return placed(vol, vol.metadata)
    if inner is not None and not name.endswith(_H5):
        raise ValueError(f"{text!r}: only HDF5 files and zarr stores take a ':name' suffix; "
                         f"accepted forms: {ACCEPTED_FORMS}")
    if path.is_dir():
        vol = ImageFolderVolume(path, voxel_size=vs, is_label=labels)
    elif name.endswith(_H5):
        vol = Hdf5Volume(path, inner, voxel_size=vs, is_label=labels)
    elif name.endswith((".tif", ".tiff")):
        vol = TiffVolume(path, voxel_size=voxel_size, is_label=labels)
        return placed(vol, vol.metadata)
    elif name.endswith(".vsvi"):
        return VsviVolume(path, is_label=labels)
    else:
        raise ValueError(f"unsupported volume {text!r}; accepted forms: {ACCEPTED_FORMS}")
    vol.voxel_size_known = voxel_size is not None  # image folders and HDF5 carry none we read
    return vol


@contextmanager
def open_source(spec: str | Path, layer: int | None = None, *, labels: bool = False,
                client: VastClient | None = None) -> Iterator[VolumeSource]:
    """The volume of ``spec`` for the duration of a ``with`` block.

    A VAST address (``vast``, ``vast://HOST:PORT``) reads image layer ``layer`` of that VAST
    (e.g. prediction tiles loaded there); without a layer, the segmentation layer selected in
    VAST when ``labels``, else layer 0. The connection is opened here and closed on exit unless
    the caller passes its own ``client``. Every other form goes to :func:`open_volume`.
    """
    address = parse_vast_address(str(spec))
    if address is None:
        yield open_volume(spec, labels=labels)
        return
    from membrane_py.vastapi.client import VastClient
    from membrane_py.volumes.vast import VastVolume

    own = client is None
    client = client or VastClient(*address).connect()
    try:
        yield VastVolume(client, layer or 0, segmentation=labels and layer is None)
    finally:
        if own:
            client.close()
