"""Checkpoints load weights-only: a checkpoint carrying a pickle payload (an object whose unpickling runs a
command) is refused by `models.checkpoint.load`, and the command never runs. The same file loaded without
`weights_only` does run it, so the payload is real."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_in_a_checkpoint_is_refused(tmp_path: Path):
    import torch

    from models import checkpoint

    marker = tmp_path / "payload-ran"
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    torch.save({"format": checkpoint.FORMAT, "model_config": Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what a plain torch.load would do
    assert marker.exists()
