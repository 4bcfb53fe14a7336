"""Neural network architectures: the 2D U-Net family for membranes and organelles and the
3D flood-filling network (:mod:`membrane_py.models.ffn`).

:func:`build_model` is the one factory every command uses to turn an architecture config
recorded in a checkpoint (``UNetConfig.to_dict()``, with its ``arch``) into a network.
"""

from membrane_py.models.unet import ARCHS, UNet, UNetConfig


def build_model(config: dict | UNetConfig) -> UNet:
    """A freshly initialised network for a recorded architecture config (any of
    :data:`ARCHS`; configs without ``arch`` are the plain U-Net)."""
    return UNet(config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config))


__all__ = ["ARCHS", "UNet", "UNetConfig", "build_model"]
