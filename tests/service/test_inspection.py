"""service.inspection against references that share none of its code: gates and states computed by hand with numpy
from the PyTorch module's own parameters (PyTorch gate orders, not the ONNX file), onnxruntime run directly, and
occlusions run one sequence at a time. Models are real exports (write_run + export_run) with small hidden sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.inspection import (
    TOLERANCE,
    InspectionMismatch,
    Inspector,
    InvalidSequence,
    UnsupportedGraph,
    horizons,
)

STEPS = 12
# (cell, layers, bidirectional, head): every cell, 2 layers and bidirectional, both heads.
CASES = [
    ("lstm", 1, False, "per_timestep"),
    ("lstm", 2, True, "per_timestep"),
    ("lstm", 1, False, "last"),
    ("gru", 1, False, "per_timestep"),
    ("gru", 2, True, "last"),
    ("rnn", 2, False, "per_timestep"),
    ("rnn", 2, True, "last"),  # 1-layer bidirectional `last` models do not export (see the report)
]
IDS = [f"{c}-{n}x{'bi' if b else 'uni'}-{h}" for c, n, b, h in CASES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, tuple[Path, Any]]:
    """case -> (published version folder, the checkpoint's PyTorch model)."""
    from export.pipeline import export_run
    from models import checkpoint
    from tests.export.conftest import write_run

    root = tmp_path_factory.mktemp("inspection")
    out = {}
    for i, (cell, layers, bidirectional, head) in enumerate(CASES):
        settings = {"cell": cell, "num_layers": layers, "bidirectional": bidirectional, "head": head}
        run = write_run(root / f"run{i}", seed=i, hidden_size=5, **settings)
        _, folder = export_run(run, root / "repo", f"m{i}")
        out[CASES[i]] = (folder, checkpoint.load(run / checkpoint.CHECKPOINT_FILE).model)
    return out


def sequence(seed: int = 0, steps: int = STEPS) -> np.ndarray:
    """Raw features around the models' normalisation (write_run's mean is ~ 3 N(0, 1), std in [0.5, 2.5])."""
    return (np.random.default_rng(seed).normal(size=(steps, 6)) * 3).astype(np.float32)


# ----------------------------------------------------------------------------------- the reference, by hand


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def lstm_by_hand(xs: np.ndarray, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch's LSTM, gate order (i, f, g, o)."""
    size = p["weight_hh"].shape[1]
    h, c, rows = np.zeros(size), np.zeros(size), []
    for x in xs:
        z = p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
        i, f, g, o = _sig(z[:size]), _sig(z[size : 2 * size]), np.tanh(z[2 * size : 3 * size]), _sig(z[3 * size :])
        c = f * c + i * g
        h = o * np.tanh(c)
        rows.append({"input": i, "forget": f, "cell": g, "output": o, "hidden": h, "cell_state": c})
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def gru_by_hand(xs: np.ndarray, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch's GRU, gate order (r, z, n); n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    size = p["weight_hh"].shape[1]
    h, rows = np.zeros(size), []
    for x in xs:
        gx = p["weight_ih"] @ x + p["bias_ih"]
        gh = p["weight_hh"] @ h + p["bias_hh"]
        r = _sig(gx[:size] + gh[:size])
        z = _sig(gx[size : 2 * size] + gh[size : 2 * size])
        n = np.tanh(gx[2 * size :] + r * gh[2 * size :])
        h = (1 - z) * n + z * h
        rows.append({"reset": r, "update": z, "new": n, "hidden": h})
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def rnn_by_hand(xs: np.ndarray, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    h, rows = np.zeros(p["weight_hh"].shape[1]), []
    for x in xs:
        h = np.tanh(p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"])
        rows.append(h)
    return {"hidden": np.array(rows)}


BY_HAND = {"lstm": lstm_by_hand, "gru": gru_by_hand, "rnn": rnn_by_hand}


def by_hand(model: Any, x: np.ndarray) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Every (layer, direction) trace in order, and the probabilities the module's head gives: per timestep for a
    per-timestep head; for a `last` head, its answer for each prefix x[:t+1] (rerun from scratch per prefix)."""
    config = model.config
    if config.head == "last":
        finals = [_final_features(model, by_hand_traces(model, x[: t + 1])) for t in range(len(x))]
        return by_hand_traces(model, x), _softmax(np.array(finals) @ _head(model)[0].T + _head(model)[1])
    traces = by_hand_traces(model, x)
    last = np.concatenate([t["hidden"] for t in traces[-config.num_directions :]], axis=1)
    weight, bias = _head(model)
    return traces, _softmax(last @ weight.T + bias)


def by_hand_traces(model: Any, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    config = model.config
    mean, std = model.feature_mean.double().numpy(), model.feature_std.double().numpy()
    layer_input, traces = (x.astype(np.float64) - mean) / std, []
    for layer in range(config.num_layers):
        outputs = []
        for suffix in ("", "_reverse")[: config.num_directions]:
            params = {
                n: getattr(model.rnn, f"{n}_l{layer}{suffix}").detach().double().numpy()
                for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            }
            seq = layer_input[::-1] if suffix else layer_input
            trace = BY_HAND[config.cell](seq, params)
            trace = {k: v[::-1] for k, v in trace.items()} if suffix else trace
            traces.append(trace)
            outputs.append(trace["hidden"])
        layer_input = np.concatenate(outputs, axis=1)
    return traces


def _final_features(model: Any, traces: list[dict[str, np.ndarray]]) -> np.ndarray:
    """A `last` head's input: the last layer's forward state at the last step and backward state at step 0."""
    last = traces[-model.config.num_directions :]
    return np.concatenate([last[0]["hidden"][-1]] + [t["hidden"][0] for t in last[1:]])


def _head(model: Any) -> tuple[np.ndarray, np.ndarray]:
    return model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ort_probabilities(folder: Path, batch: np.ndarray, lengths: np.ndarray, model: Any) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"features": batch.astype(np.float32), "lengths": lengths.astype(np.int64)}
    layers_dirs, hidden = model.config.state_shape
    for spec in session.get_inputs()[2:]:
        feeds[spec.name] = np.zeros((layers_dirs, len(batch), hidden), dtype=np.float32)
    return session.run(["probabilities"], feeds)[0]


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gates_and_states_equal_a_hand_computation_from_the_pytorch_weights(exported, case):
    folder, model = exported[case]
    x = sequence(1)
    result = Inspector.from_version(folder).inspect(x)
    expected, _ = by_hand(model, x)
    config = model.config
    assert [(e.layer, e.direction) for e in result.layers] == [
        (layer, direction) for layer in range(config.num_layers) for direction in ("forward", "backward")[: 1 + case[2]]
    ]
    names = {"lstm": ["input", "forget", "cell", "output"], "gru": ["reset", "update", "new"], "rnn": []}[case[0]]
    for entry, reference in zip(result.layers, expected, strict=True):
        assert list(entry.gates) == names
        for name in names:
            np.testing.assert_allclose(entry.gates[name], reference[name], rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(entry.hidden, reference["hidden"], rtol=0, atol=1e-5)
        assert entry.hidden.shape == (STEPS, 5)
        if case[0] == "lstm":
            np.testing.assert_allclose(entry.cell_state, reference["cell_state"], rtol=0, atol=1e-5)
        else:
            assert entry.cell_state is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_probabilities_equal_the_hand_computation_and_onnxruntime(exported, case):
    folder, model = exported[case]
    x = sequence(2)
    result = Inspector.from_version(folder).inspect(x)
    _, expected = by_hand(model, x)
    np.testing.assert_allclose(result.probabilities, expected, rtol=0, atol=1e-5)
    alone = ort_probabilities(folder, x[None], np.array([STEPS]), model)[0]
    final = result.probabilities if case[3] == "per_timestep" else result.probabilities[-1]
    np.testing.assert_allclose(final, alone, rtol=0, atol=1e-5)
    assert result.labels == tuple(model_classes(folder)[i] for i in expected.argmax(axis=1))
    assert 0 <= result.max_difference <= TOLERANCE


def model_classes(folder: Path) -> list[str]:
    return json.loads((folder / "manifest.json").read_text())["class_names"]


@pytest.mark.parametrize("case", [c for c in CASES if not (c[2] and c[3] == "per_timestep")], ids=str)
def test_memory_is_exactly_zero_where_the_future_would_move_the_past(exported, case):
    """Unidirectional models, and `last` heads (whose answer at t is the prefix x[:t+1]'s)."""
    folder, _ = exported[case]
    result = Inspector.from_version(folder).inspect(sequence(3))
    assert np.all(result.memory[np.triu_indices(STEPS, 1)] == 0.0)
    assert np.all(np.abs(np.diag(result.memory)) > 0)
    assert result.memory.shape == (STEPS, STEPS)


def test_a_bidirectional_per_timestep_model_remembers_the_future(exported):
    folder, _ = exported[CASES[1]]
    result = Inspector.from_version(folder).inspect(sequence(3))
    assert np.abs(result.memory[np.triu_indices(STEPS, 1)]).max() > 1e-4


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4]], ids=str)
def test_memory_equals_occlusions_run_one_at_a_time(exported, case):
    """Each entry recomputed with its own onnxruntime call (and its own prefix for `last` heads)."""
    folder, model = exported[case]
    x = sequence(4, steps=6)
    result = Inspector.from_version(folder).inspect(x)
    mean = model.feature_mean.numpy()
    for t_in in range(len(x)):
        occluded = x.copy()
        occluded[t_in] = mean
        for t_out in range(len(x)):
            c = int(result.probabilities[t_out].argmax())
            if case[3] == "per_timestep":
                p = ort_probabilities(folder, occluded[None], np.array([len(x)]), model)[0, t_out, c]
            else:
                p = ort_probabilities(folder, occluded[None, : t_out + 1], np.array([t_out + 1]), model)[0, c]
            expected = result.probabilities[t_out, c] - p
            assert result.memory[t_out, t_in] == pytest.approx(expected, abs=1e-5), (t_out, t_in)


def test_onnxruntime_gives_bit_identical_rows_for_identical_prefixes_in_one_batch(exported):
    """What the by-construction zeros agree with on CPU: occluding x_k leaves rows' outputs before k bit for bit."""
    folder, model = exported[CASES[3]]
    x = sequence(5)
    batch = np.repeat(x[None], STEPS + 1, axis=0)
    for k in range(STEPS):
        batch[k + 1, k] = 0.0
    probabilities = ort_probabilities(folder, batch, np.full(STEPS + 1, STEPS), model)
    for k in range(STEPS):
        assert np.array_equal(probabilities[k + 1, :k], probabilities[0, :k]), k
        assert not np.array_equal(probabilities[k + 1, k], probabilities[0, k]), k


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_horizon_is_between_one_step_and_the_whole_past(exported, case):
    folder, _ = exported[case]
    result = Inspector.from_version(folder).inspect(sequence(6))
    assert result.horizon.dtype.kind == "i"
    assert np.all(result.horizon >= 1)
    assert np.all(result.horizon <= np.arange(1, STEPS + 1))


def test_horizon_counts_the_recent_steps_that_hold_90_percent():
    memory = np.zeros((4, 4))
    memory[1, :2] = [0.5, -0.5]  # half and half: both steps needed
    memory[2, :3] = [0.0, 0.05, 0.95]  # the current step alone holds 95 %
    memory[3, :4] = [0.8, 0.0, 0.1, 0.1]  # 90 % needs every step back to t = 0
    assert horizons(memory).tolist() == [1, 2, 1, 4]


@pytest.mark.parametrize(
    ("wrong", "what"), [("mean", "normalisation mean"), ("std", "normalisation std"), ("none", "nothing")]
)
def test_a_wrong_normalisation_is_a_mismatch_not_a_wrong_answer(exported, wrong, what):
    folder, model = exported[CASES[0]]
    mean, std = model.feature_mean.double().numpy(), model.feature_std.double().numpy()
    if wrong == "mean":
        mean = mean + 0.5
    elif wrong == "std":
        std = std * 1.5
    inspector = Inspector(folder / "model.onnx", model.config, mean, std, model_classes(folder))
    if wrong == "none":
        assert inspector.inspect(sequence(7)).max_difference <= TOLERANCE
        return
    with pytest.raises(InspectionMismatch, match=r"disagree by .* at timestep \d+ \(tolerance 1e-05\)"):
        inspector.inspect(sequence(7))


def test_a_graph_that_is_not_the_config_is_refused(exported):
    folder, model = exported[CASES[0]]
    from dataclasses import replace

    for config, message in [
        (replace(model.config, cell="gru"), r"expected 1 GRU node\(s\), found \['LSTM'\]"),
        (replace(model.config, hidden_size=6), "hidden_size 5, expected 6"),
        (replace(model.config, bidirectional=True), "direction 'forward', expected 'bidirectional'"),
    ]:
        mean, std = model.feature_mean.numpy(), model.feature_std.numpy()
        with pytest.raises(UnsupportedGraph, match=message):
            Inspector(folder / "model.onnx", config, mean, std, model_classes(folder))


@pytest.mark.parametrize(
    ("sequence_", "message"),
    [
        (np.zeros((3, 5)), r"sequence: expected shape \[T, 6\], got \[3, 5\]"),
        (np.zeros((0, 6)), "sequence: empty sequence"),
        (np.zeros((9, 6)), "sequence: 9 timesteps exceed the inspection limit of 8"),
        ([[0.0] * 6, [0.0] * 6, [0, 1, 2, float("nan"), 4, 5]], r"sequence\[2\]\[3\]: value nan is not a finite"),
        ([[0.0] * 5 + [1e39]], r"sequence\[0\]\[5\]: value 1e\+39 is not a finite float32"),
        ([[0.0] * 6, [0.0] * 5], "sequence: not a"),
    ],
)
def test_invalid_sequences_say_where(exported, sequence_, message):
    folder, _ = exported[CASES[0]]
    with pytest.raises(InvalidSequence, match=message):
        Inspector.from_version(folder, max_timesteps=8).inspect(sequence_)


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[5]], ids=str)
def test_to_dict_is_json_with_the_documented_shapes(exported, case):
    folder, model = exported[case]
    body = json.loads(json.dumps(Inspector.from_version(folder).inspect(sequence(8)).to_dict()))
    config = model.config
    assert (body["cell"], body["head"], body["bidirectional"]) == (config.cell, config.head, config.bidirectional)
    assert body["timesteps"] == STEPS
    assert body["classes"] == model_classes(folder)
    assert len(body["labels"]) == STEPS
    assert np.array(body["probabilities"]).shape == (STEPS, config.num_classes)
    assert np.array(body["memory"]).shape == (STEPS, STEPS)
    assert len(body["horizon"]) == STEPS
    assert len(body["layers"]) == config.num_layers * config.num_directions
    for entry in body["layers"]:
        assert set(entry) == {"layer", "direction", "gates", "hidden"} | (
            {"cell_state"} if case[0] == "lstm" else set()
        )
        assert np.array(entry["hidden"]).shape == (STEPS, 5)
        assert all(np.array(v).shape == (STEPS, 5) for v in entry["gates"].values())
    assert body["check"]["max_abs_difference"] <= body["check"]["tolerance"] == TOLERANCE
