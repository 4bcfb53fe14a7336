"""Neural network architectures: the 2D U-Net for membranes and organelles and the 3D
flood-filling network (:mod:`membrane_py.models.ffn`)."""

from membrane_py.models.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
