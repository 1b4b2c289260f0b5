"""The model: configuration, output shapes, parameter counts, padding invariance, normalisation in buffers."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from models.model import ModelConfig, SequenceClassifier, parameter_count_formula

CELLS = ("rnn", "gru", "lstm")
HEADS = ("per_timestep", "last")
ALL = list(itertools.product(CELLS, (1, 2), (False, True), HEADS))


def build(cell: str, layers: int = 2, bidirectional: bool = False, head: str = "per_timestep", **kw):
    torch.manual_seed(0)
    settings = {"input_dim": 6, "num_classes": 3, "hidden_size": 8, **kw}
    config = ModelConfig(cell=cell, num_layers=layers, bidirectional=bidirectional, head=head, **settings)
    return SequenceClassifier(config).eval()


def reference_count(config: ModelConfig) -> int:
    """PyTorch's own count for the same recurrence and linear head, built independently of our module."""
    rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.cell](
        config.input_dim, config.hidden_size, config.num_layers, bidirectional=config.bidirectional
    )
    head = nn.Linear(config.hidden_size * config.num_directions, config.num_classes)
    return sum(p.numel() for p in [*rnn.parameters(), *head.parameters()])


def test_tutorial_lstm_has_5186_parameters():
    model = SequenceClassifier(ModelConfig(input_dim=6, num_classes=2, cell="lstm", hidden_size=32))
    assert model.parameter_count() == 5186
    assert parameter_count_formula(model.config) == 5186


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "head"), ALL)
def test_parameter_count_matches_formula_and_pytorch(cell, layers, bidirectional, head):
    model = build(cell, layers, bidirectional, head, hidden_size=12, input_dim=5, num_classes=4)
    assert model.parameter_count() == parameter_count_formula(model.config) == reference_count(model.config)


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "head"), ALL)
def test_output_and_state_shapes(cell, layers, bidirectional, head):
    model = build(cell, layers, bidirectional, head)
    features, lengths = torch.randn(4, 9, 6), torch.tensor([9, 3, 5, 1])
    with torch.no_grad():
        logits, state = model.forward_with_state(features, lengths, None)
    assert logits.shape == ((4, 9, 3) if head == "per_timestep" else (4, 3))
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == (2 if cell == "lstm" else 1)
    for tensor in states:
        assert tensor.shape == (layers * (2 if bidirectional else 1), 4, 8)


def test_per_timestep_output_keeps_the_padded_time_axis():
    """Even when every sequence is shorter than the batch's time axis, outputs line up with the inputs."""
    model = build("gru")
    with torch.no_grad():
        logits = model(torch.randn(2, 10, 6), torch.tensor([4, 2]))
    assert logits.shape == (2, 10, 3)


def _padded_batch(lengths: list[int], generator: torch.Generator) -> torch.Tensor:
    """Random sequences, right-padded with large garbage so any leak of padding shows."""
    features = torch.randn(len(lengths), max(lengths), 6, generator=generator)
    for i, length in enumerate(lengths):
        features[i, length:] = 100 * torch.randn(max(lengths) - length, 6, generator=generator)
    return features


@pytest.mark.parametrize(("cell", "bidirectional", "head"), list(itertools.product(CELLS, (False, True), HEADS)))
def test_padding_never_changes_outputs(cell, bidirectional, head):
    model = build(cell, 2, bidirectional, head)
    lengths = [7, 2, 5, 1]
    features = _padded_batch(lengths, torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched, batched_state = model.forward_with_state(features, torch.tensor(lengths), None)
        for i, length in enumerate(lengths):
            alone, alone_state = model.forward_with_state(features[i : i + 1, :length], torch.tensor([length]), None)
            if head == "per_timestep":
                torch.testing.assert_close(batched[i, :length], alone[0], rtol=0, atol=1e-6)
            else:
                torch.testing.assert_close(batched[i], alone[0], rtol=0, atol=1e-6)
            for got, want in zip(_states(batched_state), _states(alone_state), strict=True):
                torch.testing.assert_close(got[:, i], want[:, 0], rtol=0, atol=1e-6)


def _states(state) -> tuple[torch.Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", CELLS)
def test_initial_state_carries_a_sequence_on(cell):
    """Running a sequence in two chunks, passing the state on, equals running it whole."""
    model = build(cell, 2, False, "per_timestep")
    features = torch.randn(1, 12, 6)
    with torch.no_grad():
        whole, whole_state = model.forward_with_state(features, torch.tensor([12]), None)
        first, state = model.forward_with_state(features[:, :5], torch.tensor([5]), None)
        second, end_state = model.forward_with_state(features[:, 5:], torch.tensor([7]), state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=0, atol=1e-6)
    for got, want in zip(_states(end_state), _states(whole_state), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_normalisation_buffers_standardise_raw_features():
    raw = torch.randn(3, 8, 6) * 5 + 2
    mean, std = raw.reshape(-1, 6).mean(0), raw.reshape(-1, 6).std(0)
    normalising = build("lstm")
    normalising.set_normalization(mean, std)
    plain = build("lstm")  # same seed: same weights, identity normalisation
    lengths = torch.tensor([8, 6, 3])
    with torch.no_grad():
        torch.testing.assert_close(normalising(raw, lengths), plain((raw - mean) / std, lengths))
    assert "feature_mean" in normalising.state_dict()
    assert "feature_std" in normalising.state_dict()


def test_constant_features_keep_unit_scale():
    model = build("rnn")
    model.set_normalization(torch.arange(6.0), torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0, 1e-12]))
    assert model.feature_std.tolist() == [1.0, 1.0, 2.0, 1.0, 3.0, 1.0]
    assert model.feature_mean.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cell": "transformer"}, "cell"),
        ({"head": "mean"}, "head"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_classes": 1}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_config_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"input_dim": 6, "num_classes": 3, **change})


def test_forward_returns_logits_not_probabilities():
    """Softmax belongs to export: the module's outputs are unnormalised (rows do not sum to one)."""
    model = build("lstm", head="last")
    with torch.no_grad():
        logits = model(torch.randn(16, 5, 6) * 3, torch.full((16,), 5))
    assert not torch.allclose(logits.sum(-1), torch.ones(16), atol=1e-3)
    assert (logits < 0).any()
