"""Neural network architectures: the 2D U-Net family for membranes and organelles, a 3D
U-Net for affinities of isotropic volumes (:mod:`membrane_py.models.unet3d`) and the 3D
flood-filling network (:mod:`membrane_py.models.ffn`).

:func:`build_model` is the one factory every command uses to turn an architecture config
recorded in a checkpoint (``UNetConfig.to_dict()``, with its ``arch``) into a network.
"""

from membrane_py.models.unet import ARCHS, ARCHS_3D, UNet, UNetConfig
from membrane_py.models.unet3d import UNet3D


def build_model(config: dict | UNetConfig) -> UNet | UNet3D:
    """A freshly initialised network for a recorded architecture config (any of
    :data:`ARCHS` or :data:`ARCHS_3D`; configs without ``arch`` are the plain U-Net)."""
    cfg = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)
    return UNet3D(cfg) if cfg.arch == "unet3d" else UNet(cfg)


__all__ = ["ARCHS", "ARCHS_3D", "UNet", "UNet3D", "UNetConfig", "build_model"]
