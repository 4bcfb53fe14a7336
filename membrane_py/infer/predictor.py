"""The contract between inference engines and everything that consumes them.

An engine (PyTorch, ONNX Runtime) turns a stack of uint8 EM sections into class
probabilities of the same size. The volume runner, the evaluation tool and the instance
tools only see this protocol, so they work with either backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Predictor(Protocol):
    """Runs a trained network on whole sections of any size."""

    n_classes: int
    class_names: list[str]
    margin: int  # context (px) the engine itself adds around each internal tile
    model_sha256: str  # digest of the weights (checkpoint or ONNX tensors): the model's identity

    def predict(self, em: np.ndarray) -> np.ndarray:
        """(z, y, x) uint8 EM -> (z, C, y, x) float32 class probabilities (sum to 1 over C).

        Applies the preprocessing recorded in the checkpoint. Sections are independent;
        callers that want context across chunk borders pass a larger array and crop.
        """
        ...
