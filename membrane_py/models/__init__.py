"""Neural network architectures: the 2D U-Net for membranes and organelles."""

from membrane_py.models.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
