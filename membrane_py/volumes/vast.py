"""A layer of a running VAST (or mock server) as a VolumeSource.

VAST keeps its own mip pyramid, so :meth:`VastVolume.read` asks for the requested mip
directly instead of downsampling mip-0 data here.
"""

from __future__ import annotations

import numpy as np

from membrane_py.geometry import Box
from membrane_py.vastapi.client import EM_DTYPES, VastClient, VastInfo
from membrane_py.volumes.base import VolumeSource


class VastVolume(VolumeSource):
    """EM layer ``layer`` of VAST, or (``segmentation=True``) the selected segmentation layer.

    Geometry (size, voxel size, mips) comes from GETINFO when the object is made; the
    pixel type from the layer's bytes per pixel (segmentation is always uint16).
    """

    def __init__(self, client: VastClient, layer: int = 0, segmentation: bool = False) -> None:
        self.client = client
        self.layer = int(layer)
        self.is_label = segmentation
        self.info: VastInfo = client.get_info()
        if segmentation:
            self.name = f"VAST segmentation ({client.host}:{client.port})"
            self._dtype, self._channels = np.dtype(np.uint16), 1
        else:
            layer_info = client.get_layer_info(self.layer)
            bpp = layer_info.bytes_per_pixel
            if bpp not in EM_DTYPES:
                raise ValueError(f"VAST layer {layer} ({layer_info.name!r}) has {bpp} bytes per "
                                 f"pixel; supported: {sorted(EM_DTYPES)}")
            self.name = layer_info.name or f"VAST layer {layer}"
            self._dtype, self._channels = np.dtype(EM_DTYPES[bpp]), 3 if bpp == 3 else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.info.data_size

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return self.info.voxel_size

    @property
    def n_mips(self) -> int:
        return self.info.n_mips

    def read(self, box: Box, mip: int = 0) -> np.ndarray:
        """Voxels of ``box`` (coordinates at ``mip``), read from VAST at that mip."""
        full = Box.full(self.shape_at(mip))
        if not full.contains(box):
            raise IndexError(
                f"{self.name}: box {box} lies outside the volume {full.shape} at mip {mip}")
        if self.is_label:
            return self.client.get_seg_image(box, mip)
        return self.client.get_em_image(self.layer, box, mip)

    def _read(self, box: Box) -> np.ndarray:
        return self.read(box, 0)
