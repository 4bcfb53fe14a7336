"""Prediction: tiled inference engines, the volume runner, writers, instances, paint layers."""
