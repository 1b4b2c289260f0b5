"""The exported graph: softmax in the wrapper, not in the trained module; example inputs that keep axes dynamic."""

from __future__ import annotations

import pytest
import torch

from export import artifacts
from models.model import ModelConfig, SequenceClassifier


@pytest.mark.parametrize("head", ["per_timestep", "last"])
def test_wrapper_adds_softmax_to_the_module_logits(head):
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(input_dim=3, num_classes=4, cell="gru", hidden_size=5, head=head))
    graph = artifacts.InferenceGraph(model)
    features, lengths, h0 = artifacts.example_inputs(model.config)
    with torch.no_grad():
        probabilities, logits, hn = graph(features, lengths, h0)
        expected_logits, expected_state = model.forward_with_state(features, lengths, h0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    torch.testing.assert_close(probabilities, torch.softmax(expected_logits, -1), rtol=0, atol=0)
    torch.testing.assert_close(hn, expected_state, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("cell", "bidirectional", "states"), [("lstm", False, 2), ("gru", False, 1), ("lstm", True, 0)]
)
def test_example_inputs_are_a_mixed_batch_longer_than_one_step(cell, bidirectional, states):
    """Exporting with B = T = 1 would bake those sizes into the graph."""
    config = ModelConfig(input_dim=3, num_classes=2, cell=cell, num_layers=2, bidirectional=bidirectional)
    features, lengths, *state = artifacts.example_inputs(config)
    batch, steps, _ = features.shape
    assert batch > 1
    assert steps > 1
    assert int(lengths.max()) == steps
    assert len(set(lengths.tolist())) == batch
    assert lengths.dtype == torch.int64
    assert len(state) == states
    assert all(s.shape == (2, batch, 32) for s in state)


def test_io_specs_of_a_bidirectional_sequence_classifier():
    config = ModelConfig(input_dim=6, num_classes=3, cell="gru", num_layers=2, bidirectional=True, head="last")
    inputs, outputs = artifacts.io_specs(config)
    assert [s.to_dict() for s in inputs] == [
        {"name": "features", "datatype": "FP32", "shape": ["batch", "time", 6]},
        {"name": "lengths", "datatype": "INT64", "shape": ["batch"]},
    ]
    assert [(s.name, s.shape) for s in outputs] == [("probabilities", ("batch", 3)), ("logits", ("batch", 3))]
