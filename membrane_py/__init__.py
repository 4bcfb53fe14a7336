"""membrane-py: deep-network segmentation of EM volumes, working with VAST."""

__version__ = "0.1.0"
