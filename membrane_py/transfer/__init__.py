"""Transfer learning: fine-tuning modes, episodic memory, lineage, and ONNX export/import."""
