"""Ground-truth conversions, saturated-region patch sampling and augmentations."""
