"""A checkpoint is a plain dict of primitives and tensors, so `torch.load(weights_only=True)` reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.model import ModelConfig, SequenceClassifier

FORMAT = "seqserve-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    model: SequenceClassifier
    feature_names: list[str]
    class_names: list[str]
    seq_len: int
    extra: dict[str, Any]


def save(path: Path, ckpt: Checkpoint) -> None:
    torch.save(
        {
            "format": FORMAT,
            "model_config": ckpt.model.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()},
            "feature_names": ckpt.feature_names,
            "class_names": ckpt.class_names,
            "seq_len": ckpt.seq_len,
            "extra": ckpt.extra,
        },
        path,
    )


def load(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    raw = torch.load(path, map_location=device, weights_only=True)
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not a seqserve checkpoint (format {raw.get('format')!r}, expected {FORMAT!r})")
    model = SequenceClassifier(ModelConfig(**raw["model_config"]))
    model.load_state_dict(raw["state_dict"])
    model.to(device).eval()
    return Checkpoint(model, list(raw["feature_names"]), list(raw["class_names"]), int(raw["seq_len"]), raw["extra"])
