"""The exported graph and how it is written: TorchScript (`model.pt`) and ONNX (`model.onnx`).

Both take raw `features` float32 [B, T, F] and the true `lengths` int64 [B] (so padding never reaches the
recurrence), and return `probabilities` (softmax, applied here rather than in the trained module) and `logits`.
Unidirectional models also take an initial state (`h0`, and `c0` for LSTM) and return the state at each sequence's
true last step (`hn`, `cn`), so a client can stream a long sequence chunk by chunk.

The state is optional in both files, zeros when left out. The graph is traced with the state as explicit positional
tensors; `model.pt` is that trace inside a small scripted module whose `forward(features, lengths, h0=None,
c0=None)` builds zeros [layers * directions, B, hidden] on the features' device and dtype. In `model.onnx` each
state input is backed by a same-named initializer of zeros [layers * directions, 1, hidden] (an ONNX input with an
initializer may be left out of the feed) and reaches its consumers through an Expand to [layers * directions, B,
hidden], B read from Shape(features): the default broadcasts to any batch and a fed state of that batch passes
unchanged (a fed state of batch 1 broadcasts too).
onnxruntime never folds such an initializer into a constant, since a feed may override it (it logs a warning
saying so when it opens the file: expected), and lists h0/c0 under `get_overridable_initializers()`, not
`get_inputs()`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
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
    """The legacy exporter and the tracer warn about what we rely on (dynamic shapes through packed sequences), and
    TorchScript is deprecated upstream though asked for; the parity check, not these warnings, proves the artifacts
    right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        yield


class _Stateless(nn.Module):
    """`model.pt` of a bidirectional model: `forward(features, lengths)`, no state to carry."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.traced(features, lengths)


class _OneState(nn.Module):
    """`model.pt` of a GRU or RNN: `forward(features, lengths, h0=None)`, zeros when h0 is left out."""

    def __init__(self, traced: torch.jit.ScriptModule, layers_dirs: int, hidden: int) -> None:
        super().__init__()
        self.traced = traced
        self.layers_dirs = layers_dirs
        self.hidden = hidden

    def forward(self, features: Tensor, lengths: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        zeros = [self.layers_dirs, features.shape[0], self.hidden]
        return self.traced(features, lengths, features.new_zeros(zeros) if h0 is None else h0)


class _TwoStates(nn.Module):
    """`model.pt` of an LSTM: `forward(features, lengths, h0=None, c0=None)`, zeros for each state left out."""

    def __init__(self, traced: torch.jit.ScriptModule, layers_dirs: int, hidden: int) -> None:
        super().__init__()
        self.traced = traced
        self.layers_dirs = layers_dirs
        self.hidden = hidden

    def forward(
        self, features: Tensor, lengths: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        zeros = [self.layers_dirs, features.shape[0], self.hidden]
        h = features.new_zeros(zeros) if h0 is None else h0
        c = features.new_zeros(zeros) if c0 is None else c0
        return self.traced(features, lengths, h, c)


def torchscript_module(graph: InferenceGraph) -> torch.jit.ScriptModule:
    """The trace (state as positional tensors, reachable as `.traced`) inside a scripted entry with named,
    optional state arguments."""
    config = graph.model.config
    states = graph.state_in
    with _quiet_export():
        traced = torch.jit.trace(graph, example_inputs(config))
        entry = _Stateless(traced) if states == 0 else (_OneState, _TwoStates)[states - 1](traced, *config.state_shape)
        return torch.jit.script(entry)


def write_torchscript(graph: InferenceGraph, path: Path) -> None:
    torchscript_module(graph).save(str(path))


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
    model = onnx.load(str(path))
    default_states(model, graph.model.config)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def default_states(model: onnx.ModelProto, config: ModelConfig) -> None:
    """Make the state inputs optional, zeros by default: each is backed by a same-named initializer of zeros
    [layers * directions, 1, hidden], expanded to the batch of `features` before its consumers (in place)."""
    names = state_names(config)[0]
    if not names:
        return
    if model.ir_version < 4:
        raise ValueError(f"ONNX IR version {model.ir_version} < 4: initializers cannot back optional inputs there")
    graph = model.graph
    declared = {i.name for i in graph.input}
    missing = [n for n in names if n not in declared]
    if missing:
        raise ValueError(f"the exported ONNX graph has no state input {missing}, its inputs are {sorted(declared)}")
    layers_dirs, hidden = config.state_shape
    prefix = "state_default/"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([layers_dirs], np.int64), prefix + "layers"),
            numpy_helper.from_array(np.array([hidden], np.int64), prefix + "hidden"),
        ]
    )
    nodes = [
        helper.make_node("Shape", ["features"], [prefix + "batch"], name=prefix + "Shape", start=0, end=1),
        helper.make_node("Concat", [prefix + n for n in ("layers", "batch", "hidden")], [prefix + "shape"], axis=0),
    ]
    for name in names:
        expanded = prefix + name
        _rename_uses(graph, name, expanded)
        graph.initializer.append(numpy_helper.from_array(np.zeros((layers_dirs, 1, hidden), np.float32), name))
        nodes.append(helper.make_node("Expand", [name, prefix + "shape"], [expanded], name=prefix + "Expand_" + name))
    for node in reversed(nodes):
        graph.node.insert(0, node)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every use of `old` at `new`, in subgraphs too (an If or Loop body may read an outer name)."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for attribute in node.attribute:
            for sub in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                _rename_uses(sub, old, new)
