"""From a run folder to a published, verified model version: TorchScript + ONNX artifacts, a parity check against
eager PyTorch, and an atomic publish into a versioned model repository with a manifest."""
