"""U-Net training: job spec, losses, metrics, checkpoints, the training loop, evaluation."""

from membrane_py.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from membrane_py.train.config import TrainJob

__all__ = ["Checkpoint", "TrainJob", "load_checkpoint", "save_checkpoint"]
