"""2D U-Net for pixel classification of EM images.

Fully convolutional: any input whose height and width are multiples of ``2 ** depth`` works,
so one network trained on 256^2 patches predicts whole 1024^2 tiles. The architecture is
described by a small JSON-able :class:`UNetConfig` that travels inside every checkpoint.

Two architectures share this skeleton (``UNetConfig.arch``): ``unet``, the classic U-Net of
two plain convolutions per stage (Ronneberger et al. 2015, as mEMbrain), and ``resunet``, a
residual U-Net whose stages are residual blocks (the two convolutions plus a 1x1 projection
of the stage input, He et al. 2016), which trains deeper stacks more easily. Only the stage
block differs, so the parameter names of the top-level parts (``down``, ``bridge``, ``up``,
``up_conv``, ``head``), the transfer modes and the export work alike for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

NORMS = ("batch", "group", "none")
#: the 2D architectures behind ``--arch`` (see the module docstring), which every command runs
ARCHS = ("unet", "resunet")
#: 3D architectures (:mod:`membrane_py.models.unet3d`): affinity training and cube prediction
ARCHS_3D = ("unet3d",)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`.

    ``depth`` is the number of 2x poolings (mEMbrain's encoder depth, default 5); stage ``i``
    has ``base_filters * 2**i`` channels. ``dropout`` applies at the deepest encoder stage and
    the bridge (mEMbrain used 0.5 there; with normalisation 0 trains faster). ``arch``
    picks the stage block (:data:`ARCHS`); configs recorded before it existed read as
    ``unet``.
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 5
    base_filters: int = 32
    norm: str = "batch"
    dropout: float = 0.0
    arch: str = "unet"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS + ARCHS_3D:
            raise ValueError(f"arch must be one of {ARCHS + ARCHS_3D}, got {self.arch!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.depth < 1 or self.base_filters < 1 or self.n_classes < 2 or self.in_channels < 1:
            raise ValueError(f"invalid U-Net config {self}: need depth>=1, base_filters>=1, "
                             "n_classes>=2, in_channels>=1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.depth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def light(cls, n_classes: int = 2, in_channels: int = 1) -> UNetConfig:
        """A cheaper variant (depth 4, 16 base filters: ~16x fewer weights than the default)."""
        return cls(in_channels=in_channels, n_classes=n_classes, depth=4, base_filters=16)


def _norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    """(3x3 conv, norm, ReLU) twice, 'same' padding; ``dims`` 3 makes the convolutions
    3x3x3 (the 3D U-Net's)."""

    def __init__(self, cin: int, cout: int, norm: str, dropout: float = 0.0,
                 dims: int = 2) -> None:
        bias = norm == "none"
        conv, drop = (nn.Conv2d, nn.Dropout2d) if dims == 2 else (nn.Conv3d, nn.Dropout3d)
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [conv(c, cout, 3, padding=1, bias=bias), _norm(norm, cout, dims),
                       nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(drop(dropout))
        super().__init__(*layers)


class _ResidualBlock(nn.Module):
    """The residual stage of ``resunet``: ReLU(convs(x) + projection(x)), where ``convs`` is
    3x3 conv, norm, ReLU, 3x3 conv, norm and ``projection`` a 1x1 conv with norm (identity
    when the channel counts match)."""

    def __init__(self, cin: int, cout: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout),
            nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=bias), _norm(norm, cout)) \
            if cin != cout else nn.Identity()
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.body(x) + self.skip(x)))


def _block(arch: str, cin: int, cout: int, norm: str, dropout: float = 0.0) -> nn.Module:
    """One stage of architecture ``arch``."""
    if arch == "resunet":
        return _ResidualBlock(cin, cout, norm, dropout)
    return _DoubleConv(cin, cout, norm, dropout)


class UNet(nn.Module):
    """Encoder of ``depth`` poolings, a bridge, a decoder with 2x2 transposed-conv upsampling
    and skip concatenation, and a 1x1 conv to ``n_classes`` logits (no softmax); each stage
    is the block of ``config.arch``."""

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig(**kwargs)
        self.config = cfg
        widths = [cfg.base_filters * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for i, w in enumerate(widths[:-1]):
            drop = cfg.dropout if i == cfg.depth - 1 else 0.0
            self.down.append(_block(cfg.arch, cin, w, cfg.norm, drop))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bridge = _block(cfg.arch, cin, widths[-1], cfg.norm, cfg.dropout)
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.up_conv.append(_block(cfg.arch, 2 * w_lo, w_lo, cfg.norm))
        self.head = nn.Conv2d(widths[0], cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.config.multiple
        if h % m or w % m:
            raise ValueError(f"input {h}x{w} is not a multiple of {m} (2**depth); pad it first "
                             "(membrane_py.predict.evaluate.predict_probabilities pads for you)")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([up(x), skip], dim=1))
        return self.head(x)
