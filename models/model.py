"""One `nn.Module` for Elman RNN, GRU and LSTM classifiers, per timestep or per sequence.

`forward` returns logits: softmax belongs to export and serving, never before `CrossEntropyLoss`. Feature
normalisation (fitted on the training split) lives in buffers, so the module, and every artifact exported from it,
takes raw features. Padding is handled with packed sequences, so padded timesteps never reach the recurrence: a
sequence alone and the same sequence padded in a batch give the same outputs, in both directions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from modelrepo.manifest import ModelConfig

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

# A recurrent state: `h` for RNN/GRU, `(h, c)` for LSTM, each [layers * directions, B, hidden].
State = Tensor | tuple[Tensor, Tensor]


def parameter_count_formula(config: ModelConfig) -> int:
    """The closed form of PyTorch's count: per layer and direction, gates * H * (input + H + 2 biases)."""
    gates, hidden, dirs = GATES[config.cell], config.hidden_size, config.num_directions
    total = 0
    for layer in range(config.num_layers):
        layer_input = config.input_dim if layer == 0 else hidden * dirs
        total += dirs * gates * hidden * (layer_input + hidden + 2)
    return total + (hidden * dirs + 1) * config.num_classes


class SequenceClassifier(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_std", torch.ones(config.input_dim))
        self.rnn = CELLS[config.cell](
            input_size=config.input_dim,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size * config.num_directions, config.num_classes)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Store the training split's feature statistics; constant features keep a unit scale."""
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """features [B, T, F] raw, lengths [B] -> logits [B, T, C] (per_timestep) or [B, C] (last)."""
        logits, _ = self.forward_with_state(features, lengths, None)
        return logits

    def forward_with_state(self, features: Tensor, lengths: Tensor, state: State | None) -> tuple[Tensor, State]:
        """As `forward`, from an initial state (zeros when None), also returning each sequence's state at its
        true last step: what a client needs to stream the next chunk of a long sequence."""
        x = (features - self.feature_mean) / self.feature_std
        # pack_padded_sequence wants lengths on the CPU whatever the model's device.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, final = self.rnn(packed, state)
        if self.config.head == "per_timestep":
            padded, _ = pad_packed_sequence(output, batch_first=True, total_length=features.shape[1])
            return self.head(self.dropout(padded)), final
        h_n = final[0] if isinstance(final, tuple) else final
        # The last layer's final state per direction: forward at the true last step, backward at step 0.
        last = h_n[-self.config.num_directions :].transpose(0, 1).reshape(features.shape[0], -1)
        return self.head(self.dropout(last)), final
