"""3D U-Net for isotropic volumes (FIB-SEM): affinities from whole cubes of EM.

The 2D and 2.5D networks (:mod:`membrane_py.models.unet`) see one section (plus a few
neighbours as channels) and must guess from them how a boundary continues in z; where voxels
are cubes, a network that convolves in z as in y and x sees the same context in all three
directions (Cicek et al. 2016). Architecture ``unet3d`` of :class:`UNetConfig`: the plain
U-Net skeleton with 3x3x3 convolutions, 2x2x2 pooling and transposed convolutions, so every
side of the input must be a multiple of ``2 ** depth``. It costs about ``3 * 2 ** depth``
times a 2D network of the same width per voxel of output, which is why the useful sizes are
small (depth 3, 8-16 base filters) on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from membrane_py.models.unet import UNetConfig, _DoubleConv


class UNet3D(nn.Module):
    """(N, in_channels, z, y, x) -> (N, n_classes, z, y, x) logits; the parts are named as
    in the 2D :class:`~membrane_py.models.unet.UNet` (``down``, ``bridge``, ``up``,
    ``up_conv``, ``head``)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.arch != "unet3d":
            raise ValueError(f"UNet3D needs arch 'unet3d', got {config.arch!r}")
        cfg = self.config = config
        widths = [cfg.base_filters * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for i, w in enumerate(widths[:-1]):
            drop = cfg.dropout if i == cfg.depth - 1 else 0.0
            self.down.append(_DoubleConv(cin, w, cfg.norm, drop, dims=3))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.bridge = _DoubleConv(cin, widths[-1], cfg.norm, cfg.dropout, dims=3)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose3d(w_hi, w_lo, 2, stride=2))
            self.up_conv.append(_DoubleConv(2 * w_lo, w_lo, cfg.norm, dims=3))
        self.head = nn.Conv3d(widths[0], cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.ndim != 5 or any(s % m for s in x.shape[-3:]):
            raise ValueError(f"input {tuple(x.shape)} must be (N, C, z, y, x) with every side "
                             f"a multiple of {m} (2**depth)")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)
