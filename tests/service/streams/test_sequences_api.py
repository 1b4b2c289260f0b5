"""Triton's sequence API on V2, as the stock `tritonclient.http` client speaks it: the state kept in a store that
every worker (SQLite) or replica (Redis) shares, so any request of a sequence may land anywhere; chunked equals
whole; unknown and expired sequences are told apart; concurrent requests of one sequence never corrupt it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.service.conftest import Server, start_server
from tests.service.streams.conftest import BIDIRECTIONAL, STREAM_MODELS, chunks, sequence, whole_answers


def infer(server: Server, name: str, x: np.ndarray, **sequence_args):
    """One V2 request through a new tritonclient (its own connection: any worker may take it)."""
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        features = httpclient.InferInput("features", [1, *x.shape], "FP32")
        features.set_data_from_numpy(x[None], binary_data=True)
        wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
        return client.infer(name, [features], outputs=wanted, **sequence_args)
    finally:
        client.close()


def run_sequence(servers: list[Server], name: str, x: np.ndarray, seq_id: int | str, seed: int) -> list[np.ndarray]:
    """Send x chunk by chunk as one sequence, alternating between `servers`; the probabilities of each chunk."""
    bounds = chunks(len(x), seed)
    answers = []
    for i, (start, end) in enumerate(bounds):
        flags = {"sequence_start": i == 0, "sequence_end": i == len(bounds) - 1}
        result = infer(servers[i % len(servers)], name, x[start:end], sequence_id=seq_id, **flags)
        answers.append(result.as_numpy("probabilities")[0])
    return answers


def check_chunked_equals_whole(server: Server, name: str, x: np.ndarray, answers: list[np.ndarray], seed: int):
    per_timestep = STREAM_MODELS[name]["head"] == "per_timestep"
    ends = [end for _, end in chunks(len(x), seed)]
    got = np.concatenate(answers) if per_timestep else np.asarray(answers)
    np.testing.assert_allclose(got, whole_answers(server, name, x, ends, per_timestep), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(STREAM_MODELS))
def test_chunked_equals_whole_across_workers(stream_server, name):
    x = sequence(19, seed=11)
    answers = run_sequence([stream_server], name, x, seq_id=1000 + len(name), seed=7)
    check_chunked_equals_whole(stream_server, name, x, answers, seed=7)


def test_string_ids_and_the_answer_parameters(stream_server):
    x = sequence(5, seed=1)
    first = infer(stream_server, "lstm1_step", x[:2], sequence_id="watch-17", sequence_start=True)
    second = infer(stream_server, "lstm1_step", x[2:], sequence_id="watch-17", sequence_end=True)
    assert second.get_response()["parameters"] == {"sequence_id": "watch-17", "sequence_steps": 5}
    got = np.concatenate([first.as_numpy("probabilities")[0], second.as_numpy("probabilities")[0]])
    np.testing.assert_allclose(got, whole_answers(stream_server, "lstm1_step", x, [], True), atol=1e-5, rtol=0)


def test_two_replicas_share_sequences_through_redis(stream_repository, redis_server, tmp_path):
    a = start_server(stream_repository, tmp_path / "a.log", sequence_store=redis_server.url)
    b = start_server(stream_repository, tmp_path / "b.log", sequence_store=redis_server.url)
    try:
        for name in ("lstm2_last", "gru2_step"):
            x = sequence(17, seed=3)
            answers = run_sequence([a, b], name, x, seq_id=4242, seed=3)
            check_chunked_equals_whole(a, name, x, answers, seed=3)
    finally:
        a.stop()
        b.stop()


def error_of(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == "400", caught.value
    return caught.value.message()


def test_unknown_sequences_need_a_start(stream_server):
    message = error_of(lambda: infer(stream_server, "gru1_last", sequence(1, 0), sequence_id=987654321))
    assert message.startswith("sequence 987654321 of model 'gru1_last' is unknown (never started, or ended)")
    assert message.endswith("its first request must set sequence_start")


def test_sequence_end_frees_the_state(stream_server):
    x = sequence(2, seed=2)
    infer(stream_server, "rnn2_step", x[:1], sequence_id=55, sequence_start=True)
    infer(stream_server, "rnn2_step", x[1:], sequence_id=55, sequence_end=True)
    assert "is unknown" in error_of(lambda: infer(stream_server, "rnn2_step", x[1:], sequence_id=55))


def test_expired_sequences_say_so_with_their_steps(stream_repository, tmp_path):
    server = start_server(stream_repository, tmp_path / "log", sequence_idle_s="1")
    try:
        x = sequence(7, seed=4)
        infer(server, "lstm1_step", x, sequence_id=8, sequence_start=True)
        time.sleep(1.5)
        message = error_of(lambda: infer(server, "lstm1_step", x[:1], sequence_id=8))
        assert "expired" in message
        assert "7 timesteps" in message
        assert "sequence_start" in message
    finally:
        server.stop()


def test_concurrent_requests_of_one_sequence_never_corrupt_it(stream_server):
    """Eight requests of one sequence at once, each with the same timestep: each either advances the sequence or
    gets 409; afterwards the state is exactly that of the accepted requests run one after another."""
    start, step, probe = sequence(3, seed=5), sequence(1, seed=6), sequence(1, seed=7)
    infer(stream_server, "gru2_step", start, sequence_id=77, sequence_start=True)

    def attempt(_: int) -> str:
        try:
            infer(stream_server, "gru2_step", step, sequence_id=77)
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    refused = [o for o in outcomes if o != "ok"]
    assert all(o.startswith("409 ") and "changed while this request ran" in o for o in refused), refused
    accepted = outcomes.count("ok")
    assert accepted >= 1
    last = infer(stream_server, "gru2_step", probe, sequence_id=77, sequence_end=True)
    assert last.get_response()["parameters"]["sequence_steps"] == 3 + accepted + 1
    whole = np.concatenate([start, np.repeat(step, accepted, axis=0), probe])
    expected = whole_answers(stream_server, "gru2_step", whole, [], True)[-1]
    np.testing.assert_allclose(last.as_numpy("probabilities")[0, -1], expected, atol=1e-5, rtol=0)


def test_bidirectional_models_and_explicit_state_are_refused(stream_server):
    message = error_of(lambda: infer(stream_server, BIDIRECTIONAL, sequence(2, 0), sequence_id=3, sequence_start=True))
    assert "bidirectional" in message
    client = httpclient.InferenceServerClient(stream_server.url.removeprefix("http://"))
    try:
        features = httpclient.InferInput("features", [1, 1, 6], "FP32")
        features.set_data_from_numpy(sequence(1, 0)[None])
        h0 = httpclient.InferInput("h0", [1, 1, 6], "FP32")
        h0.set_data_from_numpy(np.zeros((1, 1, 6), np.float32))
        message = error_of(lambda: client.infer("lstm1_step", [features, h0], sequence_id=4, sequence_start=True))
        assert message == "inputs ['h0'] and sequence_id exclude each other: the sequence's state is kept for it"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_start": True}, "need a sequence_id"),
        ({"sequence_id": 1.5}, "expected a uint64 or a string, got float"),
        ({"sequence_id": -3}, "-3 is not a uint64"),
        ({"sequence_id": 2, "sequence_end": "yes"}, "parameter sequence_end: expected true or false"),
    ],
)
def test_malformed_sequence_parameters(stream_server, parameters, message):
    body = {
        "inputs": [{"name": "features", "shape": [1, 1, 6], "datatype": "FP32", "data": [0.0] * 6}],
        "parameters": parameters,
    }
    response = stream_server.post("/v2/models/lstm1_step/infer", body)
    assert response.status_code == 400
    assert message in response.json()["error"]
