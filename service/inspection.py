"""Inside a served model: gates, states and memory per timestep, recomputed from the served artifact itself.

Mechanism. The ONNX file the service runs holds every weight as an initializer. `Inspector` reads them with
`onnx.numpy_helper`, finding the pieces by the graph's structure rather than by name: one ONNX LSTM/GRU/RNN node per
layer in graph order (both directions of a bidirectional layer in one node), and the head as the MatMul + Add or
Gemm that produces the Softmax's input. It then reruns the recurrence in float64 numpy, one step at a time, keeping
what onnxruntime never returns: every gate and state at every timestep, for every layer and direction. The ONNX gate
orders become the names of the literature: LSTM `iofc` -> `input`, `output`, `forget`, `cell` (the candidate);
GRU `zrh` -> `update`, `reset`, `new`, with `linear_before_reset` as the exporter wrote it (PyTorch's GRU is 1);
the Elman RNN (tanh) has no gates. The input is normalised with the manifest's mean and std, initial states are 0.

Memory is measured by occlusion through the model's real onnxruntime session, in one batched call: row 0 is the
sequence, row 1 + t' the sequence with x_t' replaced by the training mean (zero after normalisation), and
`memory[t][t']` = p_t(c_t) - p_t(c_t | x_t' occluded), c_t the class predicted at t. A `last`-head model answers
once per sequence, so its per-timestep answer is defined as its answer for the prefix x[:t+1] (for unidirectional
models that is the head on h_t; for bidirectional ones the backward direction reads the prefix from t back to 0, as
it would if the sequence ended at t; at the final step it is exactly what predict answers). Its batch is therefore
made of prefixes, run through `lengths`: the T prefixes of the sequence and, for each t', the occluded prefixes that
contain t'; one call of T + T(T+1)/2 rows padded to T, which costs O(T³) cells, hence its lower default length limit.
An output at t that cannot depend on x_t' (t' > t, for unidirectional models and for every `last`-head model, whose
prefix x[:t+1] does not contain x_t') is exactly 0 by construction: those entries are never measured, because the
occluded input the output is a function of is bit for bit the original one. (Measured anyway, onnxruntime's CPU
kernels give bit-identical rows for identical prefixes within one batch, so they come out 0 as well; the
construction keeps that exact on any provider.) `horizon[t]` is the number of most recent steps (t, t-1, ...) that
hold 90 % of the total |memory| of row t over t' <= t (a row with no memory at all has horizon 1).

Check. Every call compares the recomputed per-timestep probabilities with onnxruntime's rows for the same sequence
(row 0 of the batch; for `last` heads the T prefixes) and raises `InspectionMismatch` beyond 1e-5, so a wrong
normalisation or a graph we misread is an error, never a silently wrong picture. The answer's `probabilities` are
onnxruntime's, as predict gives them; gates and states are numpy's, vouched for by that check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from modelrepo import manifest as manifests
from modelrepo.manifest import Manifest, ModelConfig

TOLERANCE = 1e-5
MEMORY_SHARE = 0.9
# Occlusion cells per call: (T + 1) * T for per-timestep heads, about T³ / 2 for `last` heads.
DEFAULT_MAX_TIMESTEPS = {"per_timestep": 512, "last": 64}
ONNX_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
GATE_ROWS = {"lstm": 4, "gru": 3, "rnn": 1}
GATES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new"), "rnn": ()}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
DIRECTIONS = ("forward", "backward")


class InspectionError(Exception):
    """Base of what inspecting a model can raise."""


class InvalidSequence(InspectionError, ValueError):
    """The sequence cannot be inspected (shape, values, length limit); the message says where."""


class UnsupportedGraph(InspectionError):
    """The ONNX graph is not the one export/artifacts.py writes for this config (so we cannot recompute it)."""


class InspectionMismatch(InspectionError):
    """numpy's recomputation and onnxruntime disagree on the same sequence beyond the tolerance."""


@dataclass(frozen=True)
class RecurrentWeights:
    """One ONNX recurrent node: W [D, G*H, In], R [D, G*H, H], biases Wb and Rb [D, G*H], in ONNX gate order."""

    w: np.ndarray
    r: np.ndarray
    wb: np.ndarray
    rb: np.ndarray
    linear_before_reset: bool


@dataclass(frozen=True)
class Weights:
    layers: tuple[RecurrentWeights, ...]
    head_weight: np.ndarray  # [C, D*H]
    head_bias: np.ndarray  # [C]


@dataclass
class DirectionTrace:
    """One direction of one layer over a batch: hidden [B, T, H], gates name -> [B, T, H], LSTM cell state."""

    hidden: np.ndarray
    gates: dict[str, np.ndarray] = field(default_factory=dict)
    cell_state: np.ndarray | None = None


@dataclass(frozen=True)
class LayerTrace:
    layer: int
    direction: str
    gates: dict[str, np.ndarray]  # name -> [T, H]
    hidden: np.ndarray  # [T, H]
    cell_state: np.ndarray | None  # [T, H], LSTM only

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "direction": self.direction,
            "gates": {name: values.tolist() for name, values in self.gates.items()},
            "hidden": self.hidden.tolist(),
        }
        if self.cell_state is not None:
            out["cell_state"] = self.cell_state.tolist()
        return out


@dataclass(frozen=True)
class Inspection:
    config: ModelConfig
    classes: tuple[str, ...]
    labels: tuple[str, ...]  # [T]
    probabilities: np.ndarray  # [T, C], onnxruntime's
    layers: tuple[LayerTrace, ...]
    memory: np.ndarray  # [T, T]: [output t, input t']
    horizon: np.ndarray  # [T] int
    max_difference: float  # max |numpy - onnxruntime| over the probabilities

    @property
    def timesteps(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.config.cell,
            "head": self.config.head,
            "bidirectional": self.config.bidirectional,
            "timesteps": self.timesteps,
            "classes": list(self.classes),
            "labels": list(self.labels),
            "probabilities": self.probabilities.astype(np.float64).tolist(),
            "layers": [layer.to_dict() for layer in self.layers],
            "memory": self.memory.tolist(),
            "horizon": self.horizon.tolist(),
            "check": {"max_abs_difference": self.max_difference, "tolerance": TOLERANCE},
        }


# ---------------------------------------------------------------------------------------------- reading the graph


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values by name: the two ways a graph can carry weights."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _recurrent_weights(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], config: ModelConfig, layer: int
) -> RecurrentWeights:
    where = f"layer {layer} ({node.op_type} node {node.name or node.output[0]!r})"
    attrs = _attributes(node)
    _check_recurrent_attributes(attrs, node.op_type, config, where)
    try:
        w, r = consts[node.input[1]].astype(np.float64), consts[node.input[2]].astype(np.float64)
    except KeyError as exc:
        raise UnsupportedGraph(f"{where}: W or R is computed in the graph, not a constant") from exc
    rows = GATE_ROWS[config.cell] * config.hidden_size
    in_dim = config.input_dim if layer == 0 else config.hidden_size * config.num_directions
    dirs = config.num_directions
    if w.shape != (dirs, rows, in_dim) or r.shape != (dirs, rows, config.hidden_size):
        expected = f"{(dirs, rows, in_dim)} / {(dirs, rows, config.hidden_size)}"
        raise UnsupportedGraph(f"{where}: W {w.shape} / R {r.shape}, expected {expected}")
    bias = consts.get(_input(node, 3))
    bias = np.zeros((dirs, 2 * rows)) if bias is None else bias.astype(np.float64)
    if node.op_type == "LSTM" and _input(node, 7):
        raise UnsupportedGraph(f"{where}: peephole weights are not supported")
    lbr = bool(attrs.get("linear_before_reset", 0))
    return RecurrentWeights(w, r, bias[:, :rows], bias[:, rows:], lbr)


def _check_recurrent_attributes(attrs: dict[str, Any], op: str, config: ModelConfig, where: str) -> None:
    direction = attrs.get("direction", b"forward").decode()
    expected = "bidirectional" if config.bidirectional else "forward"
    activations = [a.decode() for a in attrs.get("activations", [])] or None
    dirs_activations = DEFAULT_ACTIVATIONS[op] * config.num_directions
    problems = [
        f"direction {direction!r}, expected {expected!r}" if direction != expected else "",
        f"hidden_size {attrs.get('hidden_size')}, expected {config.hidden_size}"
        if attrs.get("hidden_size") != config.hidden_size
        else "",
        f"activations {activations}" if activations not in (None, DEFAULT_ACTIVATIONS[op], dirs_activations) else "",
        "clip is set" if "clip" in attrs else "",
        "input_forget is set" if attrs.get("input_forget", 0) else "",
        "layout 1 is not supported" if attrs.get("layout", 0) else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise UnsupportedGraph(f"{where}: {'; '.join(problems)}")


def _head_weights(
    model: onnx.ModelProto, consts: dict[str, np.ndarray], config: ModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The linear head: the node feeding the Softmax is Gemm(x, W, b) or Add(MatMul(x, W), b)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if len(softmax) != 1 or softmax[0].input[0] not in producers:
        raise UnsupportedGraph(f"expected one Softmax fed by the head, found {len(softmax)} Softmax nodes")
    node = producers[softmax[0].input[0]]
    if node.op_type == "Gemm":
        weight, bias = _gemm_head(node, consts)
    elif node.op_type == "Add":
        weight, bias = _matmul_add_head(node, consts, producers)
    else:
        raise UnsupportedGraph(f"the Softmax's input comes from {node.op_type}, expected Gemm or MatMul + Add")
    expected = (config.num_classes, config.hidden_size * config.num_directions)
    if weight.shape != expected or bias.shape != (config.num_classes,):
        raise UnsupportedGraph(f"head weight {weight.shape} / bias {bias.shape}, expected {expected}")
    return weight, bias


def _gemm_head(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    attrs = _attributes(node)
    if attrs.get("transA", 0) or node.input[1] not in consts or _input(node, 2) not in consts:
        raise UnsupportedGraph("head Gemm: expected constant B and C and no transA")
    weight = consts[node.input[1]].astype(np.float64) * attrs.get("alpha", 1.0)
    weight = weight if attrs.get("transB", 0) else weight.T
    return weight, consts[node.input[2]].astype(np.float64) * attrs.get("beta", 1.0)


def _matmul_add_head(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], producers: dict[str, onnx.NodeProto]
) -> tuple[np.ndarray, np.ndarray]:
    bias_names = [name for name in node.input if name in consts]
    other = [name for name in node.input if name not in consts]
    matmul = producers.get(other[0]) if len(bias_names) == 1 and len(other) == 1 else None
    if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in consts:
        raise UnsupportedGraph("head: expected Add(MatMul(x, constant W), constant b)")
    return consts[matmul.input[1]].astype(np.float64).T, consts[bias_names[0]].astype(np.float64)


def read_weights(model: onnx.ModelProto, config: ModelConfig) -> Weights:
    consts = _constants(model)
    op = ONNX_OPS[config.cell]
    nodes = [n for n in model.graph.node if n.op_type in ONNX_OPS.values()]
    if [n.op_type for n in nodes] != [op] * config.num_layers:
        raise UnsupportedGraph(f"expected {config.num_layers} {op} node(s), found {[n.op_type for n in nodes]}")
    producers = {out: node for node in model.graph.node for out in node.output}
    for i in range(1, len(nodes)):
        if not _feeds(nodes[i - 1], nodes[i].input[0], producers):
            raise UnsupportedGraph(f"layer {i}'s {op} node does not read layer {i - 1}'s output")
    layers = tuple(_recurrent_weights(node, consts, config, i) for i, node in enumerate(nodes))
    weight, bias = _head_weights(model, consts, config)
    return Weights(layers, weight, bias)


def _feeds(source: onnx.NodeProto, name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether tensor `name` is computed from `source`'s outputs (walking the graph backwards)."""
    seen, todo = set(), [name]
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        if node is source:
            return True
        seen.add(id(node))
        todo.extend(node.input)
    return False


# ------------------------------------------------------------------------------------------- the numpy recurrence


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact sigmoid, no overflow for large |z|


Step = Callable[
    [np.ndarray, np.ndarray, np.ndarray, RecurrentWeights, int],
    tuple[dict[str, np.ndarray], np.ndarray, np.ndarray],
]


def _lstm_step(
    x_part: np.ndarray, h: np.ndarray, c: np.ndarray, weights: RecurrentWeights, d: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """ONNX LSTM, gates in `iofc` order: c' = f*c + i*tanh-candidate, h' = o*tanh(c')."""
    z = x_part + h @ weights.r[d].T + weights.rb[d]
    i, o, f, g = np.split(z, 4, axis=-1)
    i, o, f, g = _sigmoid(i), _sigmoid(o), _sigmoid(f), np.tanh(g)
    c = f * c + i * g
    return {"input": i, "forget": f, "cell": g, "output": o}, o * np.tanh(c), c


def _gru_step(
    x_part: np.ndarray, h: np.ndarray, c: np.ndarray, weights: RecurrentWeights, d: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """ONNX GRU, gates in `zrh` order; with linear_before_reset the reset gate scales (R_h h + Rb_h)."""
    hidden = h.shape[-1]
    xz, xr, xh = np.split(x_part, 3, axis=-1)
    rz, rr, rh = np.split(h @ weights.r[d].T + weights.rb[d], 3, axis=-1)
    z, r = _sigmoid(xz + rz), _sigmoid(xr + rr)
    if weights.linear_before_reset:
        n = np.tanh(xh + r * rh)
    else:
        n = np.tanh(xh + (r * h) @ weights.r[d][2 * hidden :].T + weights.rb[d][2 * hidden :])
    return {"reset": r, "update": z, "new": n}, (1.0 - z) * n + z * h, c


def _rnn_step(
    x_part: np.ndarray, h: np.ndarray, c: np.ndarray, weights: RecurrentWeights, d: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    return {}, np.tanh(x_part + h @ weights.r[d].T + weights.rb[d]), c


STEPS: dict[str, Step] = {"lstm": _lstm_step, "gru": _gru_step, "rnn": _rnn_step}


def _reverse_within(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse each row's first `length` steps (an involution); padding stays where it is."""
    steps = np.arange(values.shape[1])[None, :]
    index = np.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return np.take_along_axis(values, index[..., None], axis=1)


def run_direction(
    cell: str, x: np.ndarray, lengths: np.ndarray, weights: RecurrentWeights, d: int, record: bool
) -> DirectionTrace:
    """One direction (d = 0 forward, 1 backward) over x [B, T, In] with true lengths; padded steps come out 0."""
    batch, steps, _ = x.shape
    hidden_size = weights.r.shape[-1]
    source = _reverse_within(x, lengths) if d else x
    projected = source @ weights.w[d].T + weights.wb[d]  # [B, T, G*H]
    h = np.zeros((batch, hidden_size))
    c = np.zeros((batch, hidden_size))
    hidden = np.zeros((batch, steps, hidden_size))
    gates: dict[str, np.ndarray] = {}
    cells = np.zeros((batch, steps, hidden_size)) if cell == "lstm" and record else None
    for t in range(steps):
        step_gates, h, c = STEPS[cell](projected[:, t], h, c, weights, d)
        hidden[:, t] = h
        if record:
            for name, value in step_gates.items():
                gates.setdefault(name, np.zeros((batch, steps, hidden_size)))[:, t] = value
            if cells is not None:
                cells[:, t] = c
    return _finish_direction(DirectionTrace(hidden, gates, cells), lengths, backward=bool(d))


def _finish_direction(trace: DirectionTrace, lengths: np.ndarray, backward: bool) -> DirectionTrace:
    valid = (np.arange(trace.hidden.shape[1])[None, :] < lengths[:, None])[..., None]

    def place(values: np.ndarray) -> np.ndarray:
        return (_reverse_within(values, lengths) if backward else values) * valid

    cells = None if trace.cell_state is None else place(trace.cell_state)
    return DirectionTrace(place(trace.hidden), {k: place(v) for k, v in trace.gates.items()}, cells)


def run_stack(
    config: ModelConfig, weights: Weights, x: np.ndarray, lengths: np.ndarray, record: bool
) -> list[list[DirectionTrace]]:
    """Every layer over normalised x [B, T, F]: traces[layer][direction]."""
    traces = []
    layer_input = x
    for layer in weights.layers:
        directions = [
            run_direction(config.cell, layer_input, lengths, layer, d, record) for d in range(config.num_directions)
        ]
        traces.append(directions)
        layer_input = np.concatenate([t.hidden for t in directions], axis=-1)
    return traces


def head_logits(
    config: ModelConfig, weights: Weights, last_layer: list[DirectionTrace], lengths: np.ndarray
) -> np.ndarray:
    """per_timestep: [B, T, C] from every step; last: [B, C] from forward at length-1 and backward at step 0."""
    if config.head == "per_timestep":
        features = np.concatenate([t.hidden for t in last_layer], axis=-1)
    else:
        rows = np.arange(len(lengths))
        final = [last_layer[0].hidden[rows, lengths - 1]] + [t.hidden[:, 0] for t in last_layer[1:]]
        features = np.concatenate(final, axis=-1)
    return features @ weights.head_weight.T + weights.head_bias


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ memory, horizon


def occlusion_rows(x: np.ndarray, mean: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch for onnxruntime: (features [N, T, F], lengths [N], occluded step per row (-1: none)).

    per_timestep: the sequence, then one row per occluded step, all of full length. last: the T prefixes, then for
    each occluded step t' the prefixes x[:t+1] with t >= t' (the others equal the sequence's own prefixes)."""
    steps = len(x)
    if head == "per_timestep":
        occluded = np.arange(-1, steps)
        lengths = np.full(steps + 1, steps, dtype=np.int64)
    else:
        rows, cols = np.triu_indices(steps)  # (t', t) with t >= t'
        occluded = np.concatenate([np.full(steps, -1), rows])
        lengths = np.concatenate([np.arange(1, steps + 1), cols + 1]).astype(np.int64)
    batch = np.repeat(x[None], len(occluded), axis=0)
    hit = occluded >= 0
    batch[np.flatnonzero(hit), occluded[hit]] = mean
    return batch.astype(np.float32), lengths, occluded


def memory_matrix(original: np.ndarray, occluded: np.ndarray, causal: bool) -> np.ndarray:
    """original [T, C] and occluded [t', t, C] (NaN where not run) -> memory [t, t'] of the class predicted at t.
    `causal`: entries t' > t are 0 by construction (the output at t is a function of x[:t+1] alone)."""
    steps = len(original)
    predicted = original.argmax(axis=-1)
    t = np.arange(steps)
    memory = (original[t, predicted][:, None] - occluded[:, t, predicted].T).astype(np.float64)
    if causal:
        memory[np.triu_indices(steps, 1)] = 0.0
    return memory


def horizons(memory: np.ndarray, share: float = MEMORY_SHARE) -> np.ndarray:
    """For each t, the fewest most recent steps (t, t-1, ...) holding `share` of row t's |memory| over t' <= t."""
    out = np.ones(len(memory), dtype=np.int64)
    for t in range(len(memory)):
        back = np.cumsum(np.abs(memory[t, t::-1]))
        if back[-1] > 0:
            out[t] = min(t + 1, int(np.searchsorted(back, share * back[-1] * (1 - 1e-12))) + 1)
    return out


# ------------------------------------------------------------------------------------------------------ inspector


def open_session(onnx_path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the optional state inputs (h0/c0) draw a warning at every load
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class Inspector:
    """Inspect one model version: `Inspector(...).inspect(sequence [T, F]) -> Inspection`."""

    def __init__(
        self,
        onnx_path: Path,
        config: ModelConfig,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        session: ort.InferenceSession | None = None,
        max_timesteps: int | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.config = config
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.class_names = tuple(class_names)
        self.feature_names = tuple(feature_names or (f"f{i + 1}" for i in range(config.input_dim)))
        self.max_timesteps = max_timesteps or DEFAULT_MAX_TIMESTEPS[config.head]
        self._check_metadata()
        try:
            self.weights = read_weights(onnx.load(str(self.onnx_path)), config)
        except UnsupportedGraph as exc:
            raise UnsupportedGraph(f"{self.onnx_path}: {exc}") from exc
        self.session = session or open_session(self.onnx_path)
        self._state_inputs = [i.name for i in self.session.get_inputs() if i.name not in ("features", "lengths")]

    @classmethod
    def from_version(
        cls,
        version_dir: Path,
        session: ort.InferenceSession | None = None,
        max_timesteps: int | None = None,
        threads: int = 1,
    ) -> Inspector:
        """An inspector for `REPO/NAME/VERSION` from its manifest.json (its own session when none is given)."""
        manifest = manifests.read(Path(version_dir))
        onnx_path = Path(version_dir) / manifest.onnx_file
        return cls.from_manifest(manifest, onnx_path, session or open_session(onnx_path, threads), max_timesteps)

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        onnx_path: Path,
        session: ort.InferenceSession | None = None,
        max_timesteps: int | None = None,
    ) -> Inspector:
        """An inspector for a version whose manifest is already read (the service's loaded versions)."""
        return cls(
            onnx_path,
            manifest.model,
            manifest.normalization.mean,
            manifest.normalization.std,
            manifest.class_names,
            session,
            max_timesteps,
            manifest.feature_names,
        )

    def _check_metadata(self) -> None:
        config = self.config
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values.shape != (config.input_dim,):
                raise ValueError(
                    f"{self.onnx_path}: normalisation {name} has shape {values.shape}, expected ({config.input_dim},)"
                )
        if len(self.class_names) != config.num_classes:
            raise ValueError(f"{self.onnx_path}: {len(self.class_names)} class names for {config.num_classes} classes")
        if len(self.feature_names) != config.input_dim:
            raise ValueError(f"{self.onnx_path}: {len(self.feature_names)} feature names for {config.input_dim}")

    @property
    def causal(self) -> bool:
        """Whether the output at t is a function of x[:t+1] alone (every model but bidirectional per-timestep)."""
        return not self.config.bidirectional or self.config.head == "last"

    def inspect(self, sequence: Any) -> Inspection:
        x = self.validate(sequence)
        traces, numpy_probabilities = self.recompute(x)
        ort_probabilities, occluded = self.occlude(x)
        difference = self._check(numpy_probabilities, ort_probabilities)
        memory = memory_matrix(ort_probabilities, occluded, self.causal)
        labels = tuple(self.class_names[i] for i in ort_probabilities.argmax(axis=-1))
        return Inspection(
            self.config,
            self.class_names,
            labels,
            ort_probabilities,
            self._layer_traces(traces),
            memory,
            horizons(memory),
            difference,
        )

    def validate(self, sequence: Any) -> np.ndarray:
        """-> float32 [T, F], or InvalidSequence naming the place."""
        dim = self.config.input_dim
        try:
            x = np.asarray(sequence, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidSequence(f"sequence: not a [T, {dim}] array of numbers ({exc})") from exc
        if x.ndim != 2 or x.shape[1] != dim:
            raise InvalidSequence(f"sequence: expected shape [T, {dim}], got {list(x.shape)}")
        if len(x) == 0:
            raise InvalidSequence("sequence: empty sequence: send at least one timestep")
        if len(x) > self.max_timesteps:
            raise InvalidSequence(f"sequence: {len(x)} timesteps exceed the inspection limit of {self.max_timesteps}")
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32)
        bad = np.argwhere(~np.isfinite(x32))
        if len(bad):
            t, f = bad[0]
            raise InvalidSequence(f"sequence[{t}][{f}]: value {float(x[t, f])!r} is not a finite float32")
        return x32

    def recompute(self, x: np.ndarray) -> tuple[list[list[DirectionTrace]], np.ndarray]:
        """numpy: every layer's trace over x (batch of one) and the per-timestep probabilities [T, C]."""
        normalised = ((x.astype(np.float64) - self.mean) / self.std)[None]
        full = np.array([len(x)])
        traces = run_stack(self.config, self.weights, normalised, full, record=True)
        if self.config.head == "per_timestep":
            logits = head_logits(self.config, self.weights, traces[-1], full)[0]
        elif not self.config.bidirectional:
            logits = traces[-1][0].hidden[0] @ self.weights.head_weight.T + self.weights.head_bias
        else:
            logits = self._prefix_logits(normalised[0])
        return traces, softmax(logits)

    def _prefix_logits(self, normalised: np.ndarray) -> np.ndarray:
        """A bidirectional `last` head's answer for every prefix x[:t+1], as one numpy batch of T prefixes."""
        steps = len(normalised)
        lengths = np.arange(1, steps + 1)
        batch = np.repeat(normalised[None], steps, axis=0)
        traces = run_stack(self.config, self.weights, batch, lengths, record=False)
        return head_logits(self.config, self.weights, traces[-1], lengths)

    def occlude(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """onnxruntime, one call: the sequence's probabilities [T, C] and occluded ones [t', t, C] (NaN: not run)."""
        batch, lengths, occluded_step = occlusion_rows(x, self.mean.astype(np.float32), self.config.head)
        probabilities = self._run(batch, lengths).astype(np.float64)
        if self.config.head == "per_timestep":
            return probabilities[0], probabilities[1:]
        rows = occluded_step >= 0
        occluded = np.full((len(x), len(x), self.config.num_classes), np.nan)
        occluded[occluded_step[rows], lengths[rows] - 1] = probabilities[rows]
        return probabilities[~rows], occluded

    def _run(self, features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feeds = {"features": features, "lengths": lengths}
        layers_dirs, hidden = self.config.state_shape
        for name in self._state_inputs:
            feeds[name] = np.zeros((layers_dirs, len(features), hidden), dtype=np.float32)
        return self.session.run(["probabilities"], feeds)[0]

    def _check(self, numpy_probabilities: np.ndarray, ort_probabilities: np.ndarray) -> float:
        difference = np.nan_to_num(np.abs(numpy_probabilities - ort_probabilities), nan=np.inf)
        worst = float(difference.max())
        if worst > TOLERANCE:
            t, c = np.unravel_index(np.argmax(difference), difference.shape)
            raise InspectionMismatch(
                f"{self.onnx_path}: numpy's recomputation and onnxruntime disagree by {difference[t, c]:.3g} on the "
                f"probability of {self.class_names[c]!r} at timestep {t} (tolerance {TOLERANCE:.0e}): the "
                "normalisation given does not match the graph's, or the graph was misread"
            )
        return worst

    def _layer_traces(self, traces: list[list[DirectionTrace]]) -> tuple[LayerTrace, ...]:
        out = []
        for layer, directions in enumerate(traces):
            for d, trace in enumerate(directions):
                cells = None if trace.cell_state is None else trace.cell_state[0]
                gates = {name: trace.gates[name][0] for name in GATES[self.config.cell]}
                out.append(LayerTrace(layer, DIRECTIONS[d], gates, trace.hidden[0], cells))
        return tuple(out)
