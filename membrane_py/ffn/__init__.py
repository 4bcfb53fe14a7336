"""Flood-filling networks (FFN): 3D neuron instance segmentation grown one object at a time.

- :mod:`~membrane_py.ffn.tfbundle`, :mod:`~membrane_py.ffn.tfimport`: read and import the
  reference's TensorFlow checkpoints without TensorFlow;
- :mod:`~membrane_py.ffn.checkpoint`: FFN checkpoints (``torch.load(weights_only=True)``);
- :mod:`~membrane_py.ffn.seeds`, :mod:`~membrane_py.ffn.movement`,
  :mod:`~membrane_py.ffn.canvas`, :mod:`~membrane_py.ffn.predictor`: inference.
"""
