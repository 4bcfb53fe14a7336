"""The weights of a TensorFlow-1 FFN checkpoint (google/ffn's convstack) for :class:`FFN`.

The reference stores each convolution as ``seed_update/<layer>/weights`` with shape
``[kz, ky, kx, in, out]`` (tf_slim, NDHWC) and ``seed_update/<layer>/biases``; PyTorch wants
``[out, in, kz, ky, kx]``. Input channel 0 of ``conv0_a`` is the image and 1 the mask, the
order :meth:`FFN.update` concatenates them in. Every weight tensor of the network must be
found with the right shape and every ``seed_update`` tensor of the file must be used, so a
checkpoint of another depth, width or model fails with one line instead of half-loading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from membrane_py.ffn.tfbundle import BundleError, read_index, read_tensors
from membrane_py.models.ffn import FFN, FFNConfig
from membrane_py.train.checkpoint import CheckpointError

SCOPE = "seed_update"


def tf_names(model: FFN) -> dict[str, str]:
    """TensorFlow variable name -> PyTorch state-dict key, for every parameter of ``model``."""
    keys = {id(p): k for k, p in model.named_parameters()}
    names = {}
    for layer, conv in zip(model.layer_names(), model.conv_layers(), strict=True):
        names[f"{SCOPE}/{layer}/weights"] = keys[id(conv.weight)]
        names[f"{SCOPE}/{layer}/biases"] = keys[id(conv.bias)]
    return names


def read_tf_weights(path: str | Path, config: FFNConfig) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict of a ``config`` network read from the TF checkpoint at ``path``
    (prefix, ``.index`` or data file) and the checkpoint's global step (0 if it has none).
    Raises :class:`CheckpointError` when the file is damaged or does not fit ``config``."""
    config = config or FFNConfig()
    model = FFN(config)
    names = tf_names(model)
    try:
        entries = read_index(path)
        unused = sorted(n for n in entries if n.startswith(SCOPE + "/") and n not in names)
        missing = sorted(n for n in names if n not in entries)
        if missing or unused:
            what = (f"lacks {missing[0]!r}" if missing else f"has {unused[0]!r}, which the "
                    "configured model has no layer for")
            raise CheckpointError(f"TF checkpoint {path} {what}: it is not a depth-"
                                  f"{config.depth}, {config.features}-feature FFN; set the "
                                  "model's depth/features to the checkpoint's")
        tensors = read_tensors(path, sorted(names))
    except BundleError as e:
        raise CheckpointError(f"TF checkpoint {path}: {e}") from None
    params = dict(model.named_parameters())
    state = {}
    for tf_name, key in names.items():
        value = tensors[tf_name]
        if value.ndim == 5:
            value = np.transpose(value, (4, 3, 0, 1, 2))
        if tuple(value.shape) != tuple(params[key].shape):
            raise CheckpointError(f"TF checkpoint {path}: {tf_name} has shape "
                                  f"{list(tensors[tf_name].shape)}, the configured model needs "
                                  f"{list(params[key].shape)} ({config})")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    step = read_tensors(path, ["global_step"]) if "global_step" in entries else {}
    return state, int(step["global_step"]) if step else 0
