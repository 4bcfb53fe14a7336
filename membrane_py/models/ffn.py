"""The flood-filling network: a single-resolution 3D residual convolution stack.

Input is two channels over one field of view (FOV), ``[normalised image, mask logits]``;
output is one channel of the same size: a logit *update* that the caller adds to the mask
logits it fed in (the recurrence of FFN comes from moving the FOV and feeding the updated
mask back, see :mod:`membrane_py.ffn.infer`). All convolutions are 3x3x3 with "same" padding
and a bias, with no normalisation, so every output voxel sees the whole FOV's context only
through depth. The layout mirrors the published convstack so its weights can be imported:

- ``conv0_a`` (ReLU) then ``conv0_b`` (linear);
- ``depth - 1`` pre-activation residual modules: ReLU -> ``conv{i}_a`` -> ReLU ->
  ``conv{i}_b``, added to the module's input;
- ReLU -> ``conv_lom`` (1x1x1, one channel): the logit update.

Sizes in :class:`FFNConfig` are (z, y, x) like every array in the project.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FFNConfig:
    """Architecture and geometry of a :class:`FFN`.

    ``fov`` is the FOV side per axis (odd, z, y, x); ``deltas`` the FOV step per axis during
    training and inference. ``depth`` counts the residual stages including the first pair of
    convolutions (12 gives 25 convolutions, as in the released FIB-25 model)."""

    depth: int = 12
    features: int = 32
    fov: tuple[int, int, int] = (33, 33, 33)
    deltas: tuple[int, int, int] = (8, 8, 8)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov", tuple(int(v) for v in self.fov))
        object.__setattr__(self, "deltas", tuple(int(v) for v in self.deltas))
        if self.depth < 1 or self.features < 1:
            raise ValueError(f"FFN depth and features must be >= 1, got {self.depth}, "
                             f"{self.features}")
        if len(self.fov) != 3 or any(v < 3 or v % 2 == 0 for v in self.fov):
            raise ValueError(f"FFN fov must be three odd sides >= 3 (z, y, x), got {self.fov}")
        if len(self.deltas) != 3 or any(d < 0 or d > v // 2
                                         for d, v in zip(self.deltas, self.fov, strict=True)):
            raise ValueError(f"FFN deltas must be three steps in 0..fov//2, got {self.deltas} "
                             f"for fov {self.fov}")

    @classmethod
    def sparse_z(cls) -> FFNConfig:
        """The preset for anisotropic data: FOV 17x33x33 (z, y, x), steps 4, 8, 8 in z, y, x."""
        return cls(depth=9, fov=(17, 33, 33), deltas=(4, 8, 8))

    @property
    def radius(self) -> tuple[int, int, int]:
        """Half the FOV per axis: the FOV centred on p spans p - radius .. p + radius."""
        return tuple(v // 2 for v in self.fov)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "fov": list(self.fov), "deltas": list(self.deltas)}

    @classmethod
    def from_dict(cls, d: dict) -> FFNConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, k, padding=k // 2)


class FFN(nn.Module):
    """The convstack: ``forward(image, mask_logits)`` -> updated mask logits, all
    ``(B, 1, Z, Y, X)`` float tensors; :meth:`update` returns only the update."""

    def __init__(self, config: FFNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FFNConfig()
        f = config.features
        self.conv0_a = _conv(2, f)
        self.conv0_b = _conv(f, f)
        self.blocks_a = nn.ModuleList(_conv(f, f) for _ in range(config.depth - 1))
        self.blocks_b = nn.ModuleList(_conv(f, f) for _ in range(config.depth - 1))
        self.conv_lom = _conv(f, 1, 1)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.01) -> None:
        """Truncated-normal weights (std 0.01) and zero biases, the reference's training init."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)

    def update(self, image: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """The logit update for ``mask_logits`` given ``image`` (same shapes)."""
        x = torch.cat([image, mask_logits], dim=1)
        x = self.conv0_b(F.relu(self.conv0_a(x)))
        for a, b in zip(self.blocks_a, self.blocks_b, strict=True):
            x = x + b(F.relu(a(F.relu(x))))
        return self.conv_lom(F.relu(x))

    def forward(self, image: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        return mask_logits + self.update(image, mask_logits).to(mask_logits.dtype)

    def layer_names(self) -> list[str]:
        """The reference's convolution names in order (``conv0_a`` ... ``conv_lom``), the
        names the checkpoint import maps onto :meth:`conv_layers`."""
        names = ["conv0_a", "conv0_b"]
        for i in range(1, self.config.depth):
            names += [f"conv{i}_a", f"conv{i}_b"]
        return names + ["conv_lom"]

    def conv_layers(self) -> list[nn.Conv3d]:
        """The convolutions in the order of :meth:`layer_names`."""
        convs = [self.conv0_a, self.conv0_b]
        for a, b in zip(self.blocks_a, self.blocks_b, strict=True):
            convs += [a, b]
        return convs + [self.conv_lom]


def fov_flops(config: FFNConfig) -> float:
    """Multiply-adds x 2 of one FOV step (every voxel of the FOV through every conv)."""
    voxels = config.fov[0] * config.fov[1] * config.fov[2]
    f = config.features
    macs = 27 * 2 * f + 27 * f * f + (config.depth - 1) * 2 * 27 * f * f + f
    return 2.0 * macs * voxels
