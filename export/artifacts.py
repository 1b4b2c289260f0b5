"""The exported graph and how it is written: TorchScript (`model.pt`) and ONNX (`model.onnx`).

Both take raw `features` float32 [B, T, F] and the true `lengths` int64 [B] (so padding never reaches the
recurrence), and return `probabilities` (softmax, applied here rather than in the trained module) and `logits`.
Unidirectional models also take an initial state (`h0`, and `c0` for LSTM) and return the state at each sequence's
true last step (`hn`, `cn`), so a client can stream a long sequence chunk by chunk.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from modelrepo.manifest import ModelConfig, TensorSpec, state_names
from models.model import SequenceClassifier

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
DEFAULT_OPSET = 17


def io_specs(config: ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    state_in, state_out = state_names(config)
    layers_dirs, hidden = config.state_shape
    per_step = ("batch", "time", config.num_classes)
    per_seq = ("batch", config.num_classes)
    out_shape = per_step if config.head == "per_timestep" else per_seq
    inputs = [
        TensorSpec("features", "FP32", ("batch", "time", config.input_dim)),
        TensorSpec("lengths", "INT64", ("batch",)),
    ]
    inputs += [TensorSpec(n, "FP32", (layers_dirs, "batch", hidden)) for n in state_in]
    outputs = [TensorSpec("probabilities", "FP32", out_shape), TensorSpec("logits", "FP32", out_shape)]
    outputs += [TensorSpec(n, "FP32", (layers_dirs, "batch", hidden)) for n in state_out]
    return inputs, outputs


class InferenceGraph(nn.Module):
    """The trained module plus the softmax, with the state flattened into positional tensors."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model.eval()
        self.state_in = len(state_names(model.config)[0])

    def forward(self, features: Tensor, lengths: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        initial = None
        if self.state_in == 2:
            initial = (state[0], state[1])
        elif self.state_in == 1:
            initial = state[0]
        logits, final = self.model.forward_with_state(features, lengths, initial)
        outputs = (torch.softmax(logits, dim=-1), logits)
        if self.state_in == 0:
            return outputs
        return outputs + (final if isinstance(final, tuple) else (final,))


def example_inputs(config: ModelConfig, batch: int = 3, steps: int = 7) -> tuple[Tensor, ...]:
    """A batch of mixed lengths, longer than one step: exporting with B = T = 1 would bake those sizes in."""
    lengths = torch.tensor([steps] + [max(1, steps - 2 * i - 1) for i in range(batch - 1)], dtype=torch.int64)
    layers_dirs, hidden = config.state_shape
    state = [torch.zeros(layers_dirs, batch, hidden) for _ in state_names(config)[0]]
    return (torch.randn(batch, steps, config.input_dim), lengths, *state)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The legacy exporter and the tracer warn about what we rely on (dynamic shapes through packed sequences);
    the parity check, not these warnings, is what proves the artifacts right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        yield


def write_torchscript(graph: InferenceGraph, path: Path) -> None:
    with _quiet_export():
        torch.jit.trace(graph, example_inputs(graph.model.config)).save(str(path))


def write_onnx(graph: InferenceGraph, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Legacy (TorchScript-based) exporter on purpose: with torch 2.13 the dynamo exporter unrolls LSTM/GRU over
    time and fixes the time axis; this one keeps batch and time dynamic and maps packed sequences onto the ONNX
    RNN ops' `sequence_lens`."""
    inputs, outputs = io_specs(graph.model.config)
    dynamic = {
        spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for spec in inputs + outputs
    }
    with _quiet_export():
        torch.onnx.export(
            graph,
            example_inputs(graph.model.config),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=dynamic,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
