"""One exported sequence classifier on onnxruntime, as the peers' custom runtimes and the in-process limit run it:
features [B, T, F] float32 in, per-timestep probabilities [B, T, C] out, every sequence full length, zero
initial state. numpy and onnxruntime only, so it imports in the peers' venvs too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class SequenceSession:
    def __init__(self, path: str | Path, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only, as the service: h0/c0 are inputs backed by initializers
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.states = [
            (i.name, i.shape[0], i.shape[2]) for i in self.session.get_inputs() if i.name not in ("features", "lengths")
        ]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        batch, steps = features.shape[:2]
        feeds = {"features": features, "lengths": np.full(batch, steps, dtype=np.int64)}
        for name, layers, hidden in self.states:
            feeds[name] = np.zeros((layers, batch, hidden), dtype=np.float32)
        return self.session.run(["probabilities"], feeds)[0]
