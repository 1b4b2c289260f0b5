"""Run folders for export tests: a real checkpoint of an untrained model, so export tests need no training."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models import checkpoint
from models.model import ModelConfig, SequenceClassifier
from tests.conftest import CLASS_NAMES, FEATURE_NAMES


def write_run(run_dir: Path, seq_len: int = 8, seed: int = 0, **config) -> Path:
    """A run folder holding `checkpoint.pt` (and a small metrics.json) for a freshly initialised model whose
    normalisation buffers are not the identity, so exported graphs must carry them."""
    settings = {"input_dim": len(FEATURE_NAMES), "num_classes": len(CLASS_NAMES), "hidden_size": 8, **config}
    torch.manual_seed(seed)
    model = SequenceClassifier(ModelConfig(**settings))
    gen = torch.Generator().manual_seed(seed)
    dim = settings["input_dim"]
    model.set_normalization(torch.randn(dim, generator=gen) * 3, torch.rand(dim, generator=gen) * 2 + 0.5)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = list(FEATURE_NAMES) if dim == len(FEATURE_NAMES) else [f"f{i + 1}" for i in range(dim)]
    classes = list(CLASS_NAMES)[: settings["num_classes"]]
    ckpt = checkpoint.Checkpoint(model.eval(), names, classes, seq_len, {"seed": seed})
    checkpoint.save(run_dir / checkpoint.CHECKPOINT_FILE, ckpt)
    (run_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.4, "split": "test"}))
    return run_dir
