"""Checkpoints: config and weights in a plain dict that `torch.load(weights_only=True)` reads."""

from __future__ import annotations

import pytest
import torch

from models import checkpoint
from models.model import ModelConfig, SequenceClassifier


def test_round_trip_restores_config_weights_and_names(tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(input_dim=3, num_classes=2, cell="gru", num_layers=2, head="last"))
    model.set_normalization(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 2.0]))
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    checkpoint.save(path, checkpoint.Checkpoint(model, ["a", "b", "c"], ["no", "yes"], 12, {"seed": 7}))

    raw = torch.load(path, weights_only=True)
    assert raw["model_config"] == model.config.to_dict()

    loaded = checkpoint.load(path)
    assert loaded.model.config == model.config
    assert (loaded.feature_names, loaded.class_names, loaded.seq_len, loaded.extra) == (
        ["a", "b", "c"],
        ["no", "yes"],
        12,
        {"seed": 7},
    )
    assert not loaded.model.training
    features, lengths = torch.randn(2, 5, 3), torch.tensor([5, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(features, lengths), model.eval()(features, lengths), rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.feature_std, model.feature_std)


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a seqserve checkpoint"):
        checkpoint.load(path)
