"""The published files on their own: `model.pt` called as `model(features, lengths)` with `h0`/`c0` optional and
by name, `model.onnx` in plain onnxruntime fed only `features` and `lengths`; both against eager PyTorch from a zero
state, against their own explicit-state calls, and chunk by chunk against the whole sequence. Real exports through
`export_run` (small models, so the module stays fast)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export import artifacts, parity
from export.pipeline import export_run
from modelrepo.manifest import ModelConfig
from models import checkpoint
from tests.export.conftest import write_run

SEQ_LEN = 4
HIDDEN = 4
LENGTHS = [9, 3, 1, 6]  # mixed in one batch, the longest first and last alike
STATEFUL = list(itertools.product(("lstm", "gru", "rnn"), (1, 2), ("per_timestep", "last")))
BIDIRECTIONAL = [("lstm", 2, "per_timestep"), ("gru", 1, "per_timestep"), ("rnn", 2, "last")]


def _id(combination) -> str:
    cell, layers, head = combination
    return f"{cell}-{layers}l-{head}"


def _load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript itself is deprecated upstream
        return torch.jit.load(str(path))


def _session(path) -> ort.InferenceSession:
    """As the service opens it: every graph optimisation on (a folded default would show)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # not the expected "initializer h0 appears in graph inputs" warning
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(root, cell: str, layers: int, head: str, bidirectional: bool = False) -> dict:
    run_dir = write_run(
        root / "run", SEQ_LEN, cell=cell, num_layers=layers, head=head, hidden_size=HIDDEN, bidirectional=bidirectional
    )
    _, folder = export_run(run_dir, root / "repository", "m")
    model = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE).model
    return {
        "folder": folder,
        "seq_len": SEQ_LEN,
        "graph": artifacts.InferenceGraph(model),
        "config": model.config,
        "pt": _load_torchscript(folder / artifacts.TORCHSCRIPT_FILE),
        "onnx": _session(folder / artifacts.ONNX_FILE),
    }


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory) -> dict:
    cell, layers, head = request.param
    return _export(tmp_path_factory.mktemp(_id(request.param)), cell, layers, head)


@pytest.fixture(scope="module")
def bidirectional(request, tmp_path_factory) -> dict:
    cell, layers, head = request.param
    return _export(tmp_path_factory.mktemp("bi-" + _id(request.param)), cell, layers, head, bidirectional=True)


stateful = pytest.mark.parametrize("exported", STATEFUL, indirect=True, ids=_id)


def _features(config, lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), config.input_dim, generator=gen) * 3
    return features, torch.tensor(lengths, dtype=torch.int64)


def _states(config, batch: int, seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A random state per state input, by name."""
    gen = torch.Generator().manual_seed(seed)
    layers_dirs, hidden = config.state_shape
    names = artifacts.state_names(config)[0]
    return {name: torch.randn(layers_dirs, batch, hidden, generator=gen) * scale for name in names}


def _zeros(config, batch: int) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(s) for name, s in _states(config, batch, 0).items()}


def _eager(case: dict, features, lengths, state: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in case["graph"](features, lengths, *state.values())]


def _pt(case: dict, features, lengths, **state: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in case["pt"](features, lengths, **state)]


def _onnx(case: dict, features, lengths, **state: torch.Tensor) -> list[np.ndarray]:
    feeds = {"features": features.numpy(), "lengths": lengths.numpy()} | {k: v.numpy() for k, v in state.items()}
    return case["onnx"].run(None, feeds)


def _valid(values: np.ndarray, lengths) -> np.ndarray:
    """The timesteps that exist, for per-timestep outputs [B, T, C]; outputs per sequence as they are."""
    if values.ndim != 3 or values.shape[0] != len(lengths):
        return values
    return np.concatenate([values[i, :n] for i, n in enumerate(lengths)])


def _assert_match(got: list[np.ndarray], want: list[np.ndarray], lengths, atol: float) -> None:
    assert len(got) == len(want)
    for name, g, w in zip(["probabilities", "logits", "hn", "cn"], got, want, strict=False):
        assert g.shape == w.shape, name
        if name in ("probabilities", "logits"):
            g, w = _valid(g, lengths.tolist()), _valid(w, lengths.tolist())
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=name)


@stateful
@pytest.mark.parametrize("call", [_pt, _onnx], ids=["model.pt", "model.onnx"])
def test_only_features_and_lengths_equal_eager_from_zeros(exported, call):
    features, lengths = _features(exported["config"], LENGTHS, seed=1)
    zeros = _zeros(exported["config"], len(LENGTHS))
    without = call(exported, features, lengths)
    _assert_match(without, _eager(exported, features, lengths, zeros), lengths, atol=1e-5)
    explicit = call(exported, features, lengths, **zeros)
    assert len(without) == 2 + len(zeros)
    for got, want in zip(without, explicit, strict=True):
        np.testing.assert_array_equal(got, want)  # padded timesteps included


@stateful
def test_named_state_is_the_traced_graph_positional_state(exported):
    features, lengths = _features(exported["config"], LENGTHS, seed=2)
    state = _states(exported["config"], len(LENGTHS), seed=3)
    traced = exported["pt"].traced
    with torch.no_grad():
        positional = [t.numpy() for t in traced(features, lengths, *state.values())]
        wrapper_positional = [t.numpy() for t in exported["pt"](features, lengths, *state.values())]
    named = _pt(exported, features, lengths, **state)
    for got, same, want in zip(named, wrapper_positional, positional, strict=True):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(same, want)
    _assert_match(named, _eager(exported, features, lengths, state), lengths, atol=1e-5)


@stateful
@pytest.mark.parametrize("call", [_pt, _onnx], ids=["model.pt", "model.onnx"])
def test_each_state_left_out_alone_is_zero(exported, call):
    """An LSTM fed only h0 (or only c0) starts the other from zeros; a fed state is never replaced by the default."""
    config = exported["config"]
    features, lengths = _features(config, LENGTHS, seed=4)
    state = _states(config, len(LENGTHS), seed=5, scale=1.0)
    for name in state:
        partial = {name: state[name]}
        got = call(exported, features, lengths, **partial)
        want = _eager(exported, features, lengths, _zeros(config, len(LENGTHS)) | partial)
        _assert_match(got, want, lengths, atol=1e-5)
        default = call(exported, features, lengths)
        assert np.abs(got[0] - default[0]).max() > 1e-3, f"{name} fed non-zero changed nothing"


@stateful
def test_onnx_default_is_not_folded_and_broadcasts_to_any_batch(exported):
    """One session, batches of several sizes, with and without a fed non-zero state."""
    config = exported["config"]
    for seed, lengths in enumerate([[1], [7, 2, 1], [1, 8], [3, 1, 6, 2, 8, 1]]):  # a 1-step sequence in each
        features, lengths = _features(config, lengths, seed=10 + seed)
        state = _states(config, len(lengths), seed=20 + seed, scale=1.0)
        default = _onnx(exported, features, lengths)
        fed = _onnx(exported, features, lengths, **state)
        _assert_match(default, _eager(exported, features, lengths, _zeros(config, len(lengths))), lengths, 1e-5)
        _assert_match(fed, _eager(exported, features, lengths, state), lengths, 1e-5)
        assert max(np.abs(f - d).max() for f, d in zip(fed, default, strict=True)) > 1e-3


@stateful
@pytest.mark.parametrize("call", [_pt, _onnx], ids=["model.pt", "model.onnx"])
def test_chunks_fed_by_name_equal_the_whole_sequence(exported, call):
    """The first chunk without a state, the next ones with hn (and cn) fed back as h0 (and c0) by name."""
    config = exported["config"]
    features, lengths = _features(config, [13, 13], seed=6)
    whole = call(exported, features, lengths)
    names = artifacts.state_names(config)[0]
    pieces, state = [], {}
    for start, stop in [(0, 5), (5, 6), (6, 13)]:
        chunk = features[:, start:stop].contiguous()
        out = call(exported, chunk, torch.full((2,), stop - start), **state)
        pieces.append(out[0])
        state = {name: torch.from_numpy(s) for name, s in zip(names, out[2:], strict=True)}
    if config.head == "per_timestep":
        np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole[0], rtol=0, atol=1e-5)
    else:
        np.testing.assert_allclose(pieces[-1], whole[0], rtol=0, atol=1e-5)
    for name, want in zip(names, whole[2:], strict=True):
        np.testing.assert_allclose(state[name].numpy(), want, rtol=0, atol=1e-5)


@stateful
def test_onnx_state_inputs_are_initializer_backed_with_their_declared_shapes(exported):
    model = onnx.load(str(exported["folder"] / artifacts.ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version >= 4  # from IR 4 on, an initializer may back a graph input
    layers_dirs, hidden = exported["config"].state_shape
    names = artifacts.state_names(exported["config"])[0]
    declared = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert list(declared) == ["features", "lengths", *names]
    defaults = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in names}
    for name in names:
        assert declared[name] == [layers_dirs, "batch", hidden]
        np.testing.assert_array_equal(defaults[name], np.zeros((layers_dirs, 1, hidden), np.float32))
    assert [i.name for i in exported["onnx"].get_inputs()] == ["features", "lengths"]
    assert [i.name for i in exported["onnx"].get_overridable_initializers()] == names


@pytest.mark.parametrize("bidirectional", BIDIRECTIONAL, indirect=True, ids=_id)
def test_bidirectional_models_take_features_and_lengths_only(bidirectional):
    features, lengths = _features(bidirectional["config"], LENGTHS, seed=7)
    want = _eager(bidirectional, features, lengths, {})
    for call in (_pt, _onnx):
        got = call(bidirectional, features, lengths)
        assert len(got) == 2
        _assert_match(got, want, lengths, atol=1e-5)
    assert [i.name for i in bidirectional["onnx"].get_inputs()] == ["features", "lengths"]
    assert bidirectional["onnx"].get_overridable_initializers() == []
    with pytest.raises(RuntimeError, match=r"expected at most 3 argument\(s\)"):
        _pt(bidirectional, features, lengths, h0=torch.zeros(4, len(LENGTHS), HIDDEN))


@pytest.mark.xfail(
    strict=True,
    raises=RuntimeError,
    reason="torch's legacy ONNX exporter crashes in its peephole pass (vector::_M_range_check) on a 1-layer "
    "bidirectional RNN whose sequence output is unused (the `last` head); already so before optional states",
)
def test_one_layer_bidirectional_last_head_exports(tmp_path):
    _export(tmp_path, "gru", 1, "last", bidirectional=True)


gru = pytest.mark.parametrize("exported", [("gru", 2, "last")], indirect=True, ids=_id)


def _check(case: dict, torchscript, onnx_path) -> parity.ParityReport:
    return parity.check(case["graph"], torchscript, onnx_path, case["seq_len"], parity.DEFAULT_TOLERANCE)


@gru
def test_parity_reports_the_calls_without_state(exported):
    report = _check(exported, exported["folder"] / artifacts.TORCHSCRIPT_FILE, exported["folder"] / artifacts.ONNX_FILE)
    assert list(report.max_abs_diff) == [
        "torchscript",
        "onnxruntime",
        "torchscript_without_state",
        "onnxruntime_without_state",
    ]
    assert all(set(diffs) == {"probabilities", "logits", "hn"} for diffs in report.max_abs_diff.values())
    assert report.to_dict()["passed"] is True


def _onnx_with(exported: dict, path, change) -> None:
    model = onnx.load(str(exported["folder"] / artifacts.ONNX_FILE))
    change(model.graph)
    onnx.save(model, str(path))


@gru
def test_parity_refuses_a_non_zero_onnx_default(exported, tmp_path):
    def shift_default(graph):
        index = next(i for i, t in enumerate(graph.initializer) if t.name == "h0")
        shifted = numpy_helper.to_array(graph.initializer[index]) + 0.5
        graph.initializer[index].CopyFrom(numpy_helper.from_array(shifted, "h0"))

    _onnx_with(exported, tmp_path / "model.onnx", shift_default)
    with pytest.raises(parity.ParityError, match=r"onnxruntime_without_state (\S+)") as caught:
        _check(exported, exported["folder"] / artifacts.TORCHSCRIPT_FILE, tmp_path / "model.onnx")
    assert "nothing was published" in str(caught.value)


@gru
def test_parity_refuses_an_onnx_file_that_requires_its_state(exported, tmp_path):
    def drop_default(graph):
        kept = [t for t in graph.initializer if t.name != "h0"]
        del graph.initializer[:]
        graph.initializer.extend(kept)

    _onnx_with(exported, tmp_path / "model.onnx", drop_default)
    with pytest.raises(parity.ParityError, match="onnxruntime cannot be called with only features and lengths"):
        _check(exported, exported["folder"] / artifacts.TORCHSCRIPT_FILE, tmp_path / "model.onnx")


@gru
def test_parity_refuses_a_torchscript_file_that_requires_its_state(exported, tmp_path):
    exported["pt"].traced.save(str(tmp_path / "model.pt"))  # the bare trace: positional state, no default
    with pytest.raises(parity.ParityError, match="torchscript cannot be called with h0 fed by name"):
        _check(exported, tmp_path / "model.pt", exported["folder"] / artifacts.ONNX_FILE)


@gru
def test_default_states_needs_an_ir_version_that_allows_initializer_inputs(exported):
    model = onnx.load(str(exported["folder"] / artifacts.ONNX_FILE))
    model.ir_version = 3
    with pytest.raises(ValueError, match="IR version 3 < 4"):
        artifacts.default_states(model, exported["config"])


@gru
def test_default_states_says_which_state_input_is_missing(exported):
    model = onnx.load(str(exported["folder"] / artifacts.ONNX_FILE))
    lstm = ModelConfig(**{**exported["config"].to_dict(), "cell": "lstm"})
    with pytest.raises(ValueError, match=r"no state input \['c0'\]"):
        artifacts.default_states(model, lstm)
