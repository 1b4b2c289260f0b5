"""Export parity for every cell, both directions and both heads (2 layers): the published ONNX and TorchScript
files against eager PyTorch, on shapes never seen at export, and the streaming state I/O."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import artifacts
from export.pipeline import export_run
from models import checkpoint
from tests.export.conftest import write_run

SEQ_LEN = 8
COMBINATIONS = list(itertools.product(("lstm", "gru", "rnn"), (False, True), ("per_timestep", "last")))
UNIDIRECTIONAL = [c for c in COMBINATIONS if not c[1]]


def _id(combination) -> str:
    cell, bidirectional, head = combination
    return f"{cell}-{'bi' if bidirectional else 'uni'}-{head}"


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory):
    """One export per combination (tests name theirs with `every` or `streaming`), shared across tests."""
    cell, bidirectional, head = request.param
    root = tmp_path_factory.mktemp(_id(request.param))
    run_dir = write_run(root / "run", SEQ_LEN, cell=cell, num_layers=2, bidirectional=bidirectional, head=head)
    version, folder = export_run(run_dir, root / "repository", "m")
    model = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE).model
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the expected "initializer h0 appears in graph inputs" warning
    session = ort.InferenceSession(str(folder / artifacts.ONNX_FILE), options, providers=["CPUExecutionProvider"])
    manifest = json.loads((folder / "manifest.json").read_text())
    names = [spec["name"] for spec in manifest["onnx"]["inputs"]]
    return {
        "version": version,
        "folder": folder,
        "model": model,
        "session": session,
        "manifest": manifest,
        "names": names,
    }


every = pytest.mark.parametrize("exported", COMBINATIONS, indirect=True, ids=_id)
streaming = pytest.mark.parametrize("exported", UNIDIRECTIONAL, indirect=True, ids=_id)


def _eager(model, *inputs: np.ndarray) -> list[np.ndarray]:
    graph = artifacts.InferenceGraph(model)
    with torch.no_grad():
        return [t.numpy() for t in graph(*(torch.from_numpy(x) for x in inputs))]


def _batch(config, batch: int, steps: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[0] = steps
    features = (rng.normal(size=(batch, steps, config.input_dim)) * 3).astype(np.float32)
    layers_dirs, hidden = config.state_shape
    states = [
        (rng.normal(size=(layers_dirs, batch, hidden)) * 0.5).astype(np.float32)
        for _ in artifacts.state_names(config)[0]
    ]
    return (features, lengths.astype(np.int64), *states)


def _valid(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    if values.ndim == 2:  # [B, C]: one output per sequence
        return values
    return np.concatenate([values[i, :n] for i, n in enumerate(lengths)])


@every
def test_published_as_version_one(exported):
    assert exported["version"] == 1
    assert exported["folder"].name == "1"
    assert sorted(p.name for p in exported["folder"].iterdir()) == ["manifest.json", "model.onnx", "model.pt"]


@every
def test_onnx_checker_passes(exported):
    onnx.checker.check_model(onnx.load(str(exported["folder"] / artifacts.ONNX_FILE)), full_check=True)


@every
def test_manifest_parity_is_within_tolerance(exported):
    report = exported["manifest"]["parity"]
    assert report["passed"] is True
    assert report["tolerance"] == 1e-5
    assert 0 <= report["max_abs_diff_probability"] <= 1e-5
    backends = {"torchscript", "onnxruntime"}
    if not exported["model"].config.bidirectional:  # the same files called without their state inputs
        backends |= {"torchscript_without_state", "onnxruntime_without_state"}
    assert set(report["max_abs_diff"]) == backends
    assert all(diffs["probabilities"] <= 1e-5 for diffs in report["max_abs_diff"].values())
    assert {b["batch"] for b in report["batches"]} == {1, 3, 64}
    assert max(b["lengths"]["max"] for b in report["batches"]) == 3 * SEQ_LEN
    assert min(b["lengths"]["min"] for b in report["batches"]) == 1


@every
def test_manifest_describes_the_model(exported):
    manifest, config = exported["manifest"], exported["model"].config
    assert manifest["version"] == 1
    assert manifest["model"]["cell"] == config.cell
    assert manifest["model"]["num_layers"] == 2
    assert manifest["model"]["bidirectional"] == config.bidirectional
    assert manifest["model"]["head"] == config.head
    assert manifest["model"]["parameter_count"] == exported["model"].parameter_count()
    np.testing.assert_allclose(manifest["normalization"]["mean"], exported["model"].feature_mean.numpy())
    assert manifest["onnx"]["opset"] == artifacts.DEFAULT_OPSET


@every
def test_onnx_axes_batch_and_time_are_dynamic(exported):
    graph = onnx.load(str(exported["folder"] / artifacts.ONNX_FILE)).graph
    features = {i.name: i for i in graph.input}["features"].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in features] == ["batch", "time", 6]
    probabilities = {o.name: o for o in graph.output}["probabilities"].type.tensor_type.shape.dim
    assert probabilities[0].dim_param == "batch"


@every
@pytest.mark.parametrize(("batch", "steps"), [(5, 4 * SEQ_LEN + 3), (2, 1), (1, 2)])
def test_onnxruntime_matches_eager_on_unseen_shapes(exported, batch, steps):
    """Shapes never used at export (3 x 7) nor in the parity check (batch 1/3/64, up to 3 x seq_len)."""
    inputs = _batch(exported["model"].config, batch, steps, seed=batch * 100 + steps)
    got = exported["session"].run(None, dict(zip(exported["names"], inputs, strict=True)))
    want = _eager(exported["model"], *inputs)
    lengths = inputs[1]
    np.testing.assert_allclose(_valid(got[0], lengths), _valid(want[0], lengths), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_valid(got[1], lengths), _valid(want[1], lengths), rtol=0, atol=1e-4)
    np.testing.assert_allclose(_valid(got[0], lengths).sum(-1), 1.0, rtol=0, atol=1e-5)
    for got_state, want_state in zip(got[2:], want[2:], strict=True):
        np.testing.assert_allclose(got_state, want_state, rtol=0, atol=1e-5)


@every
def test_torchscript_file_matches_eager_on_unseen_shapes(exported):
    inputs = _batch(exported["model"].config, 4, 3 * SEQ_LEN + 5, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript itself is deprecated upstream
        scripted = torch.jit.load(str(exported["folder"] / artifacts.TORCHSCRIPT_FILE))
    with torch.no_grad():
        got = [t.numpy() for t in scripted(*(torch.from_numpy(x) for x in inputs))]
    want = _eager(exported["model"], *inputs)
    np.testing.assert_allclose(_valid(got[0], inputs[1]), _valid(want[0], inputs[1]), rtol=0, atol=1e-6)


@every
def test_state_inputs_and_outputs(exported):
    config = exported["model"].config
    graph = onnx.load(str(exported["folder"] / artifacts.ONNX_FILE)).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in exported["session"].get_outputs()]
    manifest = exported["manifest"]["onnx"]
    # onnxruntime lists the state inputs apart: backed by initializers, they may be left out of a feed.
    assert [i.name for i in exported["session"].get_inputs()] == ["features", "lengths"]
    assert [i.name for i in exported["session"].get_overridable_initializers()] == inputs[2:]
    assert [s["name"] for s in manifest["inputs"]] == inputs
    assert [s["name"] for s in manifest["outputs"]] == outputs
    if config.bidirectional:
        assert (inputs, outputs) == (["features", "lengths"], ["probabilities", "logits"])
    elif config.cell == "lstm":
        assert (inputs[2:], outputs[2:]) == (["h0", "c0"], ["hn", "cn"])
    else:
        assert (inputs[2:], outputs[2:]) == (["h0"], ["hn"])
    for spec in manifest["inputs"][2:] + manifest["outputs"][2:]:
        assert spec["shape"] == [2, "batch", 8]
    for declared in graph.input[2:]:
        assert [d.dim_param or d.dim_value for d in declared.type.tensor_type.shape.dim] == [2, "batch", 8]


@streaming
def test_unidirectional_models_stream_chunk_by_chunk(exported):
    """Running a sequence in two chunks, passing hn/cn on, equals running it whole."""
    config, session = exported["model"].config, exported["session"]
    layers_dirs, hidden = config.state_shape
    features = (np.random.default_rng(3).normal(size=(1, 30, 6)) * 3).astype(np.float32)
    zeros = [np.zeros((layers_dirs, 1, hidden), np.float32) for _ in artifacts.state_names(config)[0]]
    names = exported["names"]

    def run(chunk, state):
        return session.run(None, dict(zip(names, [chunk, np.array([chunk.shape[1]]), *state], strict=True)))

    whole = run(features, zeros)
    first = run(features[:, :11], zeros)
    second = run(features[:, 11:], first[2:])
    if config.head == "per_timestep":
        joined = np.concatenate([first[0], second[0]], axis=1)
        np.testing.assert_allclose(joined, whole[0], rtol=0, atol=1e-5)
    else:
        np.testing.assert_allclose(second[0], whole[0], rtol=0, atol=1e-5)
    for got, want in zip(second[2:], whole[2:], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@streaming
def test_final_state_is_taken_at_each_true_last_step(exported):
    """A short sequence padded in a batch ends in the same state as the sequence alone (right-padding would
    otherwise run the recurrence over the padding)."""
    config, session = exported["model"].config, exported["session"]
    features, lengths, *states = _batch(config, 3, 12, seed=5)
    lengths = np.array([12, 4, 7])
    features[1, 4:] = 1e3  # garbage in the padding
    names = exported["names"]
    batched = session.run(None, dict(zip(names, [features, lengths, *states], strict=True)))
    alone_inputs = [features[1:2, :4], lengths[1:2], *(s[:, 1:2] for s in states)]
    alone = session.run(None, dict(zip(names, alone_inputs, strict=True)))
    for got, want in zip(batched[2:], alone[2:], strict=True):
        np.testing.assert_allclose(got[:, 1:2], want, rtol=0, atol=1e-5)
