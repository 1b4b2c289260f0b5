"""The training loop's pieces: the masked loss, the targets of each head, evaluation (each window alone, and streams
with the state carried across windows) and early stopping."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from models import data, trainer
from models.model import ModelConfig, SequenceClassifier


def model_for(head: str, cell: str = "lstm", bidirectional: bool = False) -> SequenceClassifier:
    torch.manual_seed(0)
    config = ModelConfig(input_dim=4, num_classes=3, cell=cell, hidden_size=8, head=head, bidirectional=bidirectional)
    return SequenceClassifier(config)


def windows(lengths: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in lengths]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_masked_loss_on_a_padded_batch_equals_the_loss_on_the_sequences(bidirectional):
    model = model_for("per_timestep", bidirectional=bidirectional).eval()
    items = windows([5, 2, 4])
    features, lengths, labels = data.collate(items)
    with torch.no_grad():
        padded_loss = trainer.masked_loss(model(features, lengths), labels)
        alone = [model(x[None], torch.tensor([len(y)]))[0] for x, y in items]
        expected = nn.functional.cross_entropy(torch.cat(alone), torch.cat([y for _, y in items]))
    torch.testing.assert_close(padded_loss, expected, rtol=0, atol=1e-6)


def test_padding_labels_and_logits_are_ignored():
    *_, labels = data.collate(windows([6, 1, 3]))
    padding = labels == data.IGNORE_INDEX
    assert int(padding.sum()) == 3 * 6 - (6 + 1 + 3)
    logits = torch.randn(3, 6, 3, requires_grad=True)
    loss = trainer.masked_loss(logits, labels)
    with torch.no_grad():
        garbage = logits + 1e4 * torch.randn(3, 6, 3) * padding[..., None]
    torch.testing.assert_close(trainer.masked_loss(garbage, labels), loss.detach())
    loss.backward()
    assert (logits.grad[padding] == 0).all()
    assert (logits.grad[~padding] != 0).any()


def test_last_head_targets_are_the_labels_at_each_true_last_step():
    labels = torch.tensor([[0, 1, 2, 1], [2, 0, -100, -100], [1, -100, -100, -100]])
    lengths = torch.tensor([4, 2, 1])
    assert trainer.targets_for(model_for("last"), labels, lengths).tolist() == [1, 0, 1]
    assert trainer.targets_for(model_for("per_timestep"), labels, lengths) is labels


def test_evaluate_counts_real_timesteps_only():
    model = model_for("per_timestep")
    loader = DataLoader(windows([7, 3, 5, 1]), batch_size=3, collate_fn=data.collate)
    result = trainer.evaluate(model, loader, torch.device("cpu"))
    assert len(result.y_true) == len(result.y_pred) == 16
    assert result.accuracy == pytest.approx(float((result.y_true == result.y_pred).mean()))
    assert not model.training


def test_early_stopping_keeps_the_best_epoch():
    """With a zero learning rate the validation loss never improves after the first epoch."""
    model = model_for("last", cell="gru")
    loader = DataLoader(windows([4, 4, 3, 2]), batch_size=2, collate_fn=data.collate)
    config = trainer.TrainConfig(epochs=10, lr=0.0, patience=2, progress=False)
    history = trainer.fit(model, loader, loader, config)
    assert history.stopped_early
    assert history.best_epoch == 0
    assert len(history.train_loss) == len(history.val_loss) == 3


def test_fit_improves_the_training_loss():
    model = model_for("per_timestep", cell="rnn")
    labels = torch.randint(0, 3, (16, 8), generator=torch.Generator().manual_seed(0))
    items = [(torch.randn(8, 4) + 3 * nn.functional.one_hot(y, 4).float(), y) for y in labels]
    loader = DataLoader(items, batch_size=8, collate_fn=data.collate)
    history = trainer.fit(model, loader, loader, trainer.TrainConfig(epochs=15, lr=0.03, progress=False))
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert history.val_accuracy[history.best_epoch] > 0.9


def test_defaults_follow_the_tutorial():
    """Adam with StepLR(step 50, gamma 0.2) and gradient clipping at 1.0, as the users' tutorial does."""
    config = trainer.TrainConfig()
    assert (config.lr_step, config.lr_gamma, config.grad_clip) == (50, 0.2, 1.0)


def streams_of(recordings: list[tuple[torch.Tensor, torch.Tensor]], seq_len: int) -> list[list[tuple]]:
    """Each recording cut into contiguous, non-overlapping windows in time order (as the test split is)."""
    return [[(x[s:e], y[s:e]) for s, e in data.window_bounds(len(y), seq_len, seq_len)] for x, y in recordings]


def whole(
    model: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of one recording run whole from a zero state: every timestep, or (`last` head) the
    prediction at each window's last step from the recording's start up to there."""
    if model.config.head == "per_timestep":
        return model(x[None], torch.tensor([len(y)]))[0], y
    ends = [end for _, end in data.window_bounds(len(y), seq_len, seq_len)]
    return torch.cat([model(x[None, :end], torch.tensor([end])) for end in ends]), y[torch.tensor(ends) - 1]


@pytest.mark.parametrize(
    ("cell", "layers", "head"), list(itertools.product(("rnn", "gru", "lstm"), (1, 2), ("per_timestep", "last")))
)
def test_streaming_evaluation_equals_each_recording_run_whole(cell, layers, head):
    torch.manual_seed(0)
    config = ModelConfig(input_dim=4, num_classes=3, cell=cell, num_layers=layers, hidden_size=8, head=head)
    model = SequenceClassifier(config)
    recordings = windows([23, 7, 40, 16, 5])  # cut into windows of 5 steps, a shorter one at each recording's end
    streamed = trainer.evaluate_streaming(model, streams_of(recordings, 5), torch.device("cpu"))
    with torch.no_grad():
        runs = [whole(model, x, y, 5) for x, y in recordings]
    logits, targets = torch.cat([logits for logits, _ in runs]), torch.cat([targets for _, targets in runs])
    assert not model.training
    assert len(streamed.y_true) == len(targets) == (91 if head == "per_timestep" else 5 + 2 + 8 + 4 + 1)
    assert streamed.loss == pytest.approx(float(nn.functional.cross_entropy(logits, targets)), abs=1e-6)
    assert streamed.accuracy == pytest.approx(float((logits.argmax(-1) == targets).float().mean()))
    pairs = sorted(zip(streamed.y_true.tolist(), streamed.y_pred.tolist(), strict=True))
    assert pairs == sorted(zip(targets.tolist(), logits.argmax(-1).tolist(), strict=True))


@pytest.mark.parametrize("head", ["per_timestep", "last"])
def test_streaming_differs_from_running_each_window_from_a_zero_state(head):
    model = model_for(head, cell="gru")
    recordings = windows([30, 25, 12])
    streams = streams_of(recordings, 4)
    streamed = trainer.evaluate_streaming(model, streams, torch.device("cpu"))
    loader = DataLoader([w for stream in streams for w in stream], batch_size=8, collate_fn=data.collate)
    alone = trainer.evaluate(model, loader, torch.device("cpu"))
    assert len(alone.y_true) == len(streamed.y_true)
    assert abs(alone.loss - streamed.loss) > 1e-3


def test_a_bidirectional_model_cannot_stream():
    model = model_for("per_timestep", bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional model cannot stream"):
        trainer.evaluate_streaming(model, streams_of(windows([8]), 4), torch.device("cpu"))
