"""v1 streams with signed state tokens: chunked equals whole for every cell, layer count and head, on any worker or
replica that shares the key; every kind of bad token is refused with its reason; the version a stream started on
is kept while it is loaded, 409 once it is gone."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from modelrepo import manifest as manifests
from tests.service.conftest import Server, start_server
from tests.service.streams.conftest import BIDIRECTIONAL, STREAM_MODELS, chunks, fresh, sequence, whole_answers


def stream(server: Server, name: str, x: np.ndarray, bounds: list[tuple[int, int]], state: str | None = None):
    """Send x chunk by chunk; the answers, in order."""
    answers = []
    for start, end in bounds:
        response = server.post(f"/v1/models/{name}/stream", {"timesteps": x[start:end].tolist(), "state": state})
        assert response.status_code == 200, response.text
        answers.append(response.json())
        state = answers[-1]["state"]
    return answers


@pytest.mark.parametrize("name", sorted(STREAM_MODELS))
def test_chunked_equals_whole(stream_server, name):
    per_timestep = STREAM_MODELS[name]["head"] == "per_timestep"
    x = sequence(23, seed=len(name))
    bounds = chunks(len(x), seed=len(name))
    answers = stream(fresh(stream_server), name, x, bounds)
    expected = whole_answers(stream_server, name, x, [end for _, end in bounds], per_timestep)
    if per_timestep:
        got = np.concatenate([a["probabilities"] for a in answers])
        assert sum(len(a["labels"]) for a in answers) == len(x)
    else:
        got = np.asarray([a["probabilities"] for a in answers])
        assert all(isinstance(a["label"], str) for a in answers)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert [a["steps"] for a in answers] == [end for _, end in bounds]
    assert {a["model_version"] for a in answers} == {"1"}


def test_raw_float32_body_with_the_state_in_a_header(stream_server):
    x = sequence(9, seed=3)
    first = stream(stream_server, "lstm1_step", x, [(0, 4)])[0]
    response = stream_server.session.post(
        f"{stream_server.url}/v1/models/lstm1_step/stream?outputs=probabilities",
        data=x[4:].tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Seqserve-Shape": "1,5,6",
            "Seqserve-State": first["state"],
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    got = np.concatenate([first["probabilities"], response.json()["probabilities"]])
    np.testing.assert_allclose(got, whole_answers(stream_server, "lstm1_step", x, [], True), atol=1e-5, rtol=0)
    assert response.json()["steps"] == 9
    assert "labels" not in response.json()


def test_replicas_sharing_a_key_continue_each_others_streams(stream_repository, tmp_path):
    key = "replicas-share-this-key-0123456789"
    a = start_server(stream_repository, tmp_path / "a.log", workers=1, state_key=key)
    b = start_server(stream_repository, tmp_path / "b.log", workers=1, state_key=key)
    other = start_server(stream_repository, tmp_path / "other.log", workers=1, state_key="another-key-9876543210")
    try:
        x = sequence(12, seed=5)
        state, got = None, []
        for i, (start, end) in enumerate(chunks(len(x), seed=5)):
            answer = stream([a, b][i % 2], "gru2_step", x[start:end], [(0, end - start)], state)[0]
            state, got = answer["state"], [*got, *answer["probabilities"]]
        np.testing.assert_allclose(got, whole_answers(a, "gru2_step", x, [], True), atol=1e-5, rtol=0)
        refused = other.post("/v1/models/gru2_step/stream", {"timesteps": x[:1].tolist(), "state": state})
        assert refused.status_code == 400
        assert "bad signature" in refused.json()["error"]["message"]
        assert "SEQSERVE_STATE_KEY" in refused.json()["error"]["message"]
        for server in (a, b, other):
            assert key not in server.logs()
    finally:
        for server in (a, b, other):
            server.stop()


def _flip_bit(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_flip_bit, "bad signature"),
        (lambda t: t[: len(t) // 2], "truncated"),
        (lambda t: "garbage!", "malformed"),
        (lambda t: "", "malformed"),
        (lambda t: base64.urlsafe_b64encode(b"SQST" + bytes(60)).decode(), ""),
    ],
    ids=["flipped-bit", "truncated", "garbage", "empty", "forged-header"],
)
def test_tampered_tokens_are_refused_with_their_reason(stream_server, tamper, message):
    token = stream(stream_server, "lstm1_step", sequence(3, seed=1), [(0, 3)])[0]["state"]
    response = stream_server.post("/v1/models/lstm1_step/stream", {"timesteps": [[0.0] * 6], "state": tamper(token)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["message"].startswith("state token")


def test_a_token_for_another_model_is_refused(stream_server):
    token = stream(stream_server, "lstm1_step", sequence(3, seed=1), [(0, 3)])[0]["state"]
    response = stream_server.post("/v1/models/gru2_step/stream", {"timesteps": [[0.0] * 6], "state": token})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "state token was made for model 'lstm1_step', not 'gru2_step'"


def test_bidirectional_models_say_why_they_cannot_stream(stream_server):
    response = stream_server.post(f"/v1/models/{BIDIRECTIONAL}/stream", {"timesteps": [[0.0] * 6]})
    assert response.status_code == 400
    assert "bidirectional" in response.json()["error"]["message"]
    assert "cannot answer timestep by timestep" in response.json()["error"]["message"]


def test_bad_timesteps_are_located(stream_server):
    response = stream_server.post("/v1/models/lstm1_step/stream", {"timesteps": [[0.0] * 6, [0.0] * 5]})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "timesteps[1]: expected 6 features, got 5"


def test_expired_tokens_are_refused(stream_repository, tmp_path):
    server = start_server(stream_repository, tmp_path / "log", workers=1, state_ttl="1")
    try:
        token = stream(server, "rnn1_last", sequence(2, seed=2), [(0, 2)])[0]["state"]
        time.sleep(1.5)
        response = server.post("/v1/models/rnn1_last/stream", {"timesteps": [[0.0] * 6], "state": token})
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "expired" in message
        assert "SEQSERVE_STATE_TTL" in message
    finally:
        server.stop()


def test_streams_stay_on_their_version_until_it_is_gone(stream_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(stream_repository, repo)
    server = start_server(repo, tmp_path / "log", workers=1, poll_interval="0.2")
    try:
        x = sequence(6, seed=4)
        first = stream(server, "lstm1_step", x, [(0, 3)])[0]
        shutil.copytree(repo / "lstm1_step" / "1", repo / "lstm1_step" / ".staging")
        manifest = (repo / "lstm1_step" / ".staging" / "manifest.json").read_text()
        (repo / "lstm1_step" / ".staging" / "manifest.json").write_text(
            manifest.replace('"version": 1', '"version": 2')
        )
        (repo / "lstm1_step" / ".staging").rename(repo / "lstm1_step" / "2")
        _wait(
            lambda: (
                [v["version"] for v in server.get("/v1/models/lstm1_step").json()["versions"] if v["state"] == "ready"]
                == [1, 2]
            )
        )
        kept = stream(server, "lstm1_step", x, [(3, 6)], first["state"])[0]
        assert kept["model_version"] == "1"
        assert stream(server, "lstm1_step", x, [(0, 1)])[0]["model_version"] == "2"  # a new stream: the newest
        wrong = server.post(
            "/v1/models/lstm1_step/versions/2/stream", {"timesteps": [[0.0] * 6], "state": kept["state"]}
        )
        assert wrong.status_code == 400
        assert "made for 'lstm1_step' version 1, not version 2" in wrong.json()["error"]["message"]
        shutil.rmtree(repo / "lstm1_step" / "1")
        _wait(lambda: ready_versions(server, "lstm1_step") == [2])
        gone = server.post("/v1/models/lstm1_step/stream", {"timesteps": [[0.0] * 6], "state": kept["state"]})
        assert gone.status_code == 409
        assert "version 1, which this stream started on, is no longer served" in gone.json()["error"]["message"]
        assert "restart the stream" in gone.json()["error"]["message"]
    finally:
        server.stop()


def republish(model_dir: Path, old: int, new: int) -> None:
    """Publish version `old`'s files again as version `new` (the same model under a new number)."""
    staging = model_dir / ".staging"
    shutil.copytree(model_dir / str(old), staging)
    manifests.write(staging, dataclasses.replace(manifests.read(staging), version=new))
    staging.rename(model_dir / str(new))


def ready_versions(server: Server, name: str) -> list[int]:
    return [v["version"] for v in server.get(f"/v1/models/{name}").json()["versions"] if v["state"] == "ready"]


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.mark.parametrize("name", ["lstm2_last", "gru2_step", "rnn1_last"])
def test_artifacts_alone_answer_what_the_server_answers(stream_server, stream_repository, name):
    """model.onnx in plain onnxruntime and model.pt in torch, each fed only features and lengths (the state
    starts at zero by default), give the served predictions; and continued by name with h0/c0 they give the
    served stream's."""
    import onnxruntime as ort
    import torch

    x = sequence(9, seed=8)
    served = np.asarray(whole_answers(stream_server, name, x, [9], STREAM_MODELS[name]["head"] == "per_timestep"))
    folder = stream_repository / name / "1"
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    features, lengths = x[None], np.array([9])
    from_onnx = session.run(None, {"features": features, "lengths": lengths})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; TorchScript is asked for
        scripted = torch.jit.load(str(folder / "model.pt"))
    with torch.no_grad():
        from_pt = scripted(torch.from_numpy(features), torch.from_numpy(lengths))
    np.testing.assert_allclose(from_onnx[0][0].reshape(served.shape), served, atol=1e-5, rtol=0)
    np.testing.assert_allclose(from_pt[0][0].numpy().reshape(served.shape), served, atol=1e-5, rtol=0)
    first = stream(stream_server, name, x, [(0, 4)])[0]
    rest = stream(stream_server, name, x, [(4, 9)], first["state"])[0]
    head = session.run(None, {"features": features[:, :4], "lengths": np.array([4])})
    states = dict(zip(("h0", "c0"), head[2:], strict=False))
    tail = session.run(None, {"features": features[:, 4:], "lengths": np.array([5]), **states})
    np.testing.assert_allclose(tail[0][0], np.asarray(rest["probabilities"]), atol=1e-5, rtol=0)
