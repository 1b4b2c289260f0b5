"""The training loop, and only that: it receives a model, data loaders and a config (as minGPT's Trainer does).

Cross-entropy on logits with padded timesteps ignored; Adam, StepLR and gradient clipping by default; early stopping
on validation loss, keeping the best weights; every tensor on the model's device. Evaluation runs each window alone
from a zero state (`evaluate`), or the windows of each stream in order with the state carried across them
(`evaluate_streaming`), which is how a stream is served.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.data import IGNORE_INDEX, collate
from models.model import SequenceClassifier, State

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_step: int = 50
    lr_gamma: float = 0.2
    grad_clip: float = 1.0
    patience: int = 20
    seed: int = 0
    progress: bool = True


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    y_true: np.ndarray
    y_pred: np.ndarray


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def targets_for(model: SequenceClassifier, labels: Tensor, lengths: Tensor) -> Tensor:
    """Per-timestep labels [B, T] as they are, or each sequence's label at its true last step [B]."""
    if model.config.head == "per_timestep":
        return labels
    return labels[torch.arange(labels.shape[0], device=labels.device), lengths.to(labels.device) - 1]


def masked_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over real timesteps (padding carries IGNORE_INDEX)."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _step_batches(model: SequenceClassifier, loader: DataLoader, device: torch.device):
    for features, lengths, labels in loader:
        features, lengths, labels = features.to(device), lengths.to(device), labels.to(device)
        targets = targets_for(model, labels, lengths)
        yield model(features, lengths), targets


@torch.no_grad()
def evaluate(model: SequenceClassifier, loader: DataLoader, device: torch.device) -> Evaluation:
    """Every window of the loader on its own, from a zero state."""
    model.eval()
    return _judge(_step_batches(model, loader, device))


@torch.no_grad()
def evaluate_streaming(
    model: SequenceClassifier, streams: Sequence[Sequence[tuple[Tensor, Tensor]]], device: torch.device
) -> Evaluation:
    """Each stream's windows (features, labels) in time order, the state carried from one window to the next, as a
    stream is served: per timestep, or (`last` head) one prediction per window, at its last step, from everything
    the stream has seen. The streams run side by side, one batch per window position."""
    if model.config.bidirectional:
        raise ValueError("a bidirectional model cannot stream: its backward direction reads each window from its end")
    model.eval()
    return _judge(_stream_batches(model, streams, device))


def _stream_batches(
    model: SequenceClassifier, streams: Sequence[Sequence[tuple[Tensor, Tensor]]], device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    ordered = sorted(streams, key=len, reverse=True)  # so the streams still running at any position are a prefix
    state: State | None = None
    for position in range(len(ordered[0]) if ordered else 0):
        windows = [stream[position] for stream in ordered if position < len(stream)]
        features, lengths, labels = (t.to(device) for t in collate(windows))
        logits, state = model.forward_with_state(features, lengths, _first(state, len(windows)))
        yield logits, targets_for(model, labels, lengths)


def _first(state: State | None, count: int) -> State | None:
    """The state of the first `count` sequences of a batch."""
    if isinstance(state, tuple):
        return state[0][:, :count], state[1][:, :count]
    return None if state is None else state[:, :count]


def _judge(batches: Iterable[tuple[Tensor, Tensor]]) -> Evaluation:
    """Loss and accuracy over the real (unpadded) targets of (logits, targets) batches."""
    total_loss, count, trues, preds = 0.0, 0, [], []
    for logits, targets in batches:
        mask = targets != IGNORE_INDEX
        n = int(mask.sum())
        total_loss += float(masked_loss(logits, targets)) * n
        count += n
        trues.append(targets[mask].cpu().numpy())
        preds.append(logits.argmax(-1)[mask].cpu().numpy())
    y_true, y_pred = np.concatenate(trues), np.concatenate(preds)
    return Evaluation(total_loss / max(count, 1), float((y_true == y_pred).mean()), y_true, y_pred)


def fit(model: SequenceClassifier, train_loader: DataLoader, val_loader: DataLoader, config: TrainConfig) -> History:
    """Train in place; on return the model holds the weights of the epoch with the lowest validation loss."""
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    history = History()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(config.epochs), desc="train", unit="epoch", disable=not config.progress)
    with logging_redirect_tqdm():
        for epoch in bar:
            train_loss, train_acc = _train_epoch(model, train_loader, optimizer, config.grad_clip, device)
            scheduler.step()
            val = evaluate(model, val_loader, device)
            history.train_loss.append(train_loss)
            history.train_accuracy.append(train_acc)
            history.val_loss.append(val.loss)
            history.val_accuracy.append(val.accuracy)
            bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val.loss:.4f}", val_acc=f"{val.accuracy:.3f}")
            log.debug("epoch %d: loss %.4f val_loss %.4f val_acc %.4f", epoch, train_loss, val.loss, val.accuracy)
            if val.loss < best_loss:
                best_loss, best_state, stale, history.best_epoch = val.loss, copy.deepcopy(model.state_dict()), 0, epoch
            else:
                stale += 1
                if stale >= config.patience:
                    history.stopped_early = True
                    log.info("early stop at epoch %d: no validation improvement for %d epochs", epoch, stale)
                    break
    model.load_state_dict(best_state)
    log.info("best epoch %d, validation loss %.4f", history.best_epoch, best_loss)
    return history


def _train_epoch(
    model: SequenceClassifier,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    grad_clip: float,
    device: torch.device,
) -> tuple[float, float]:
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    for logits, targets in _step_batches(model, loader, device):
        loss = masked_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        mask = targets != IGNORE_INDEX
        n = int(mask.sum())
        total_loss += float(loss.detach()) * n
        correct += int((logits.argmax(-1) == targets)[mask].sum())
        count += n
    return total_loss / max(count, 1), correct / max(count, 1)
