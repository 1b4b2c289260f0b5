"""v1 predictions equal onnxruntime run directly and the PyTorch model. Through gunicorn: one check per body kind
(JSON, raw, .npy, gzip) and the request id in the server's log; the rest (routing, codecs, output options) against
the app in process (`app_client`)."""

from __future__ import annotations

import gzip
import io
import re
import time

import numpy as np
import orjson
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CLASS_NAMES, FEATURE_NAMES

CLASSES = sorted(CLASS_NAMES)  # the loader orders label names

LENGTHS = [1, 7, 20, 45, 3]


def random_batch(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, len(FEATURE_NAMES))) * 2).astype(np.float32) for n in lengths]


def ort_alone(session, sequence: np.ndarray) -> np.ndarray:
    """The reference: one sequence, alone, no padding, zero initial state."""
    feeds = {"features": sequence[None], "lengths": np.array([len(sequence)], dtype=np.int64)}
    for spec in session.get_inputs()[2:]:
        feeds[spec.name] = np.zeros((spec.shape[0], 1, spec.shape[2]), dtype=np.float32)
    return session.run(["probabilities"], feeds)[0][0]


def torch_alone(model, sequence: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(sequence[None]), torch.tensor([len(sequence)]))
    return torch.softmax(logits, -1)[0].numpy()


def predict(client, name: str, sequences: list[np.ndarray], **extra) -> dict:
    response = client.post(f"/v1/models/{name}/predict", {"sequences": [s.tolist() for s in sequences], **extra})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", ["lstm_step", "gru_last"])
def test_predictions_equal_onnxruntime_and_pytorch(server, ort_sessions, torch_models, name):
    sequences = random_batch(LENGTHS)
    body = predict(server, name, sequences)
    assert body["model_name"] == name
    assert body["model_version"] == "1"
    assert body["classes"] == CLASSES
    assert len(body["predictions"]) == len(sequences)
    for seq, pred in zip(sequences, body["predictions"], strict=True):
        got = np.asarray(pred["probabilities"], dtype=np.float32)
        expected_ort = ort_alone(ort_sessions[name], seq)
        expected_torch = torch_alone(torch_models[name], seq)
        assert got.shape == expected_ort.shape
        np.testing.assert_allclose(got, expected_ort, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got, expected_torch, rtol=0, atol=1e-5)
        best = [CLASSES[i] for i in np.atleast_1d(expected_ort.argmax(-1))]
        if name == "lstm_step":
            assert len(pred["labels"]) == len(seq)  # padding stripped: one label per real timestep
            assert pred["labels"] == best
        else:
            assert pred["label"] == best[0]


@pytest.mark.parametrize("name", ["lstm_step", "gru_last"])
def test_mixed_length_batch_equals_one_by_one(app_client, name):
    sequences = random_batch([30, 2, 11, 1], seed=3)
    together = predict(app_client, name, sequences)["predictions"]
    for seq, batched in zip(sequences, together, strict=True):
        alone = predict(app_client, name, [seq])["predictions"][0]
        np.testing.assert_allclose(batched["probabilities"], alone["probabilities"], rtol=0, atol=1e-6)
        assert batched.get("labels", batched.get("label")) == alone.get("labels", alone.get("label"))


def test_timesteps_keyed_by_feature_name(app_client):
    sequence = random_batch([4], seed=5)[0]
    as_objects = [[dict(zip(FEATURE_NAMES, step.tolist(), strict=True)) for step in sequence]]
    response = app_client.post("/v1/models/lstm_step/predict", {"sequences": as_objects})
    assert response.status_code == 200, response.text
    by_name = response.json()
    by_position = predict(app_client, "lstm_step", [sequence])
    assert by_name["predictions"] == by_position["predictions"]


@pytest.mark.parametrize(
    ("outputs", "keys"),
    [(["labels"], {"labels"}), (["probabilities"], {"probabilities"}), (["logits", "labels"], {"logits", "labels"})],
)
def test_output_options(app_client, outputs, keys):
    body = predict(app_client, "lstm_step", random_batch([3]), outputs=outputs)
    assert set(body["predictions"][0]) == keys


def test_logits_softmax_to_probabilities(app_client):
    pred = predict(app_client, "lstm_step", random_batch([6]), outputs=["logits", "probabilities"])["predictions"][0]
    logits = torch.tensor(pred["logits"])
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), pred["probabilities"], atol=1e-6)


def test_explicit_version_path(app_client):
    sequence = random_batch([5])
    latest = predict(app_client, "lstm_step", sequence)
    response = app_client.post("/v1/models/lstm_step/versions/1/predict", {"sequences": [sequence[0].tolist()]})
    assert response.status_code == 200
    assert response.json()["predictions"] == latest["predictions"]


def test_request_id_is_echoed_generated_and_logged(server):
    given = server.post(
        "/v1/models/lstm_step/predict", {"sequences": [[[0.0] * 6]]}, headers={"X-Request-ID": "trace-abc.123"}
    )
    assert given.headers["X-Request-ID"] == "trace-abc.123"
    generated = server.post("/v1/models/lstm_step/predict", {"sequences": [[[0.0] * 6]]})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    error = server.post("/v1/models/lstm_step/predict", {"sequences": []}, headers={"X-Request-ID": "bad-one"})
    assert error.json()["error"]["request_id"] == "bad-one"
    expected = ['"request_id":"trace-abc.123"', f'"request_id":"{generated.headers["X-Request-ID"]}"']
    deadline = time.monotonic() + 10  # access lines are written in batches, every 0.2 s (service/observability.py)
    while not all(line in server.logs() for line in expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = server.logs()
    assert expected[0] in logs
    assert expected[1] in logs


def _binary_forms(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    padded = np.zeros((len(sequences), lengths.max(), len(FEATURE_NAMES)), dtype=np.float32)
    for i, s in enumerate(sequences):
        padded[i, : len(s)] = s
    return padded, lengths


@pytest.mark.parametrize("name", ["lstm_step", "gru_last"])
def test_binary_bodies_answer_as_json_does(server, name):
    sequences = random_batch([9, 4, 13], seed=7)
    as_json = predict(server, name, sequences)
    padded, lengths = _binary_forms(sequences)
    raw = server.post(
        f"/v1/models/{name}/predict",
        data=padded.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Seqserve-Shape": ",".join(map(str, padded.shape)),
            "Seqserve-Lengths": ",".join(map(str, lengths)),
        },
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"] == as_json["predictions"]
    buffer = io.BytesIO()
    np.save(buffer, padded)
    npy = server.post(
        f"/v1/models/{name}/predict?outputs=labels,probabilities",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy", "Seqserve-Lengths": ",".join(map(str, lengths))},
    )
    assert npy.status_code == 200, npy.text
    assert npy.json()["predictions"] == as_json["predictions"]


@pytest.mark.parametrize("target", ["server", "app_client"])
def test_gzip_body(request, target):
    client = request.getfixturevalue(target)
    sequences = random_batch([8])
    plain = predict(client, "lstm_step", sequences)
    zipped = client.post(
        "/v1/models/lstm_step/predict",
        data=gzip.compress(orjson.dumps({"sequences": [s.tolist() for s in sequences]})),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert zipped.status_code == 200, zipped.text
    assert zipped.json()["predictions"] == plain["predictions"]


def test_model_listing(app_client, expected_provider):
    listing = app_client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listing] == ["gru_last", "lstm_step"]
    one = app_client.get("/v1/models/lstm_step").json()
    version = one["versions"][0]
    assert version["state"] == "ready"
    assert version["provider"] == expected_provider
    assert version["classes"] == CLASSES
    assert version["feature_names"] == list(FEATURE_NAMES)
    assert version["input_dim"] == len(FEATURE_NAMES)
    assert version["head"] == "per_timestep"
    assert app_client.get("/v1/models/gru_last").json()["versions"][0]["head"] == "last"


NAMES6 = ("ax", "ay", "az", "gx", "gy", "gz")


def _schema_path(schema, body: bytes):
    """What orjson and marshmallow make of a body: the loaded dict, or the ValidationError."""
    from marshmallow import ValidationError

    try:
        return schema.load(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        return exc


def _same_load(fast, full) -> None:
    assert fast.keys() == full.keys()
    np.testing.assert_array_equal(fast["sequences"].features, full["sequences"].features)
    np.testing.assert_array_equal(fast["sequences"].lengths, full["sequences"].lengths)
    assert fast["sequences"].features.dtype == np.float32
    assert (fast["outputs"], fast.get("id")) == (full["outputs"], full.get("id"))


def test_json_numbers_path_equals_the_schema_or_declines():
    """service.codecs._numbers_v1 (simdjson, no Python object per number) takes the common v1 body, however it is
    spaced, and loads exactly what orjson and the schema load; it declines (None) every body whose shape it cannot
    prove, above all those that `as_buffer`'s flattening alone would let through, so that the schema says what is
    wrong."""
    import json

    from service.codecs import _numbers_v1
    from service.schemas import predict_schema

    schema = predict_schema(NAMES6, 4, 10)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    ragged = {"sequences": [x[0, :1].tolist(), x[1].tolist()], "outputs": ["logits", "labels"], "id": "a[b]c"}
    taken = [
        orjson.dumps({"sequences": x}, option=orjson.OPT_SERIALIZE_NUMPY),
        json.dumps({"sequences": x.tolist()}).encode(),  # Python's separators: ", "
        json.dumps(ragged, indent=2).encode(),
        orjson.dumps({"id": "r", "sequences": [[[1, 0, 1.0, 0.0, 2, -1], [0.5] * 6]]}),  # ints, exact 0s and 1s
        b'{"sequences":[[[-0.0,1e-45,3.4e38,18446744073709551615,-9223372036854775808,1E2]]]}',
    ]
    for body in taken:
        fast = _numbers_v1(body, schema)
        assert fast is not None, body
        _same_load(fast, _schema_path(schema, body))
    step = "[0,1,2,3,4,5]"
    declined = {
        "keyed timesteps (the schema's path reads them)": orjson.dumps({"sequences": [[dict.fromkeys(NAMES6, 1)]]}),
        "a number in a nested one-element list": f'{{"sequences":[[{step},[[1],2,3,4,5,6]]]}}',
        "a number for a timestep, a list one deeper": f'{{"sequences":[[7,[[1,2],3,4,5,6,7],{step}]]}}',
        "an escaped bracket beside a nested list": '{"sequences":[[[[1],2,3,4,5,6]]],"id":"\\u005b"}',
        "a boolean": f'{{"sequences":[[{step},[true,1,2,3,4,5]]]}}',
        "null": '{"sequences":[[[null,1,2,3,4,5]]]}',
        "a string": '{"sequences":[[["1",1,2,3,4,5]]]}',
        "an object among numbers": '{"sequences":[[[{},1,2,3,4,5]]]}',
        "uneven timesteps of the right total": '{"sequences":[[[0,1,2,3,4],[0,1,2,3,4,5,6]]]}',
        "a timestep too short": '{"sequences":[[[0,1,2,3,4]]]}',
        "beyond float32": f'{{"sequences":[[{step},[1e39,1,2,3,4,5]]]}}',
        "an integer beyond 64 bits": '{"sequences":[[[123456789012345678901234567890,1,2,3,4,5]]]}',
        "duplicate keys": f'{{"sequences":[[{step}]],"sequences":[[{step}]]}}',
        "an unknown key": f'{{"sequences":[[{step}]],"extra":1}}',
        "a byte order mark": f'\ufeff{{"sequences":[[{step}]]}}',
        "too many sequences": '{"sequences":[' + ",".join([f"[{step}]"] * 5) + "]}",
        "too many timesteps": '{"sequences":[[' + ",".join([step] * 11) + "]]}",
        "an empty sequence": f'{{"sequences":[[{step}],[]]}}',
        "no sequences": '{"sequences":[]}',
        "an unknown output": f'{{"sequences":[[{step}]],"outputs":["nope"]}}',
        "not an object": f"[[{step}]]",
        "invalid JSON": f'{{"sequences":[[{step}]]',
        "NaN": '{"sequences":[[[NaN,1,2,3,4,5]]]}',
        "invalid UTF-8 in a string": b'{"sequences":[[[0,1,2,3,4,5]]],"id":"\xff"}',
    }
    for what, body in declined.items():
        data = body if isinstance(body, bytes) else body.encode()
        assert _numbers_v1(data, schema) is None, what
    assert isinstance(_schema_path(schema, declined["a number in a nested one-element list"].encode()), Exception)


def test_json_numbers_path_reuses_its_parser_and_a_busy_one_changes_no_answer(app_client, monkeypatch):
    """A body gives its simdjson parser back for the next one (a fresh parser per body allocates its buffers every
    time), unless the body is larger than POOLED_BODY_BYTES. A parser whose last document is still held (as a
    traceback can hold one) refuses to parse: the body then goes to orjson and the schema, and the answer is the
    same."""
    import simdjson

    from service import codecs
    from service.schemas import predict_schema

    monkeypatch.setattr(codecs, "_IDLE_PARSERS", [])
    schema = predict_schema(NAMES6, 4, 10)
    body = orjson.dumps({"sequences": [[[0.5, 1, 2, 3, 4, 5]] * 3], "id": "x"})
    assert codecs._numbers_v1(body, schema) is not None
    (parser,) = codecs._IDLE_PARSERS
    assert codecs._numbers_v1(body, schema) is not None
    (again,) = codecs._IDLE_PARSERS
    assert again is parser  # the same parser, back again

    monkeypatch.setattr(codecs, "POOLED_BODY_BYTES", len(body) - 1)
    assert codecs._numbers_v1(body, schema) is not None
    assert codecs._IDLE_PARSERS == []  # a larger body keeps its parser's buffers out of the pool
    monkeypatch.setattr(codecs, "POOLED_BODY_BYTES", 1 << 20)

    busy = simdjson.Parser()
    held = busy.parse(b'{"sequences": [[[1, 2, 3, 4, 5, 6]]]}')
    codecs._IDLE_PARSERS[:] = [busy]
    assert codecs._numbers_v1(body, schema) is None  # declined, not an error
    sequence = np.random.default_rng(3).normal(size=(2, 5, len(FEATURE_NAMES))).round(3).tolist()
    request = {"sequences": sequence, "id": "busy"}
    decoded = []  # bodies that went to orjson: the path a declined body takes
    monkeypatch.setattr(codecs, "decode_json", lambda b, decode=codecs.decode_json: decoded.append(b) or decode(b))
    answers = []
    for pool in ([], [busy]):
        codecs._IDLE_PARSERS[:] = pool
        answers.append(app_client.post("/v1/models/lstm_step/predict", request))
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content
    assert len(decoded) == 1  # the second request only
    del held
    codecs._IDLE_PARSERS[:] = [busy]
    assert codecs._numbers_v1(body, schema) is not None  # usable again once its document is gone


def test_json_numbers_path_parsers_are_never_shared_between_threads(monkeypatch):
    """gthread workers parse in several threads at once: each call takes a parser no other call holds (a shared one
    would refuse to parse, and the body would be declined), and the pool never hands out one parser twice."""
    import sys
    import threading

    from service import codecs
    from service.schemas import predict_schema

    monkeypatch.setattr(codecs, "_IDLE_PARSERS", [])
    schema = predict_schema(NAMES6, 4, 10)
    x = np.random.default_rng(5).normal(size=(4, 10, 6)).astype(np.float32)
    body = orjson.dumps({"sequences": x}, option=orjson.OPT_SERIALIZE_NUMPY)
    declined, failed = [], []

    def work() -> None:
        try:
            for _ in range(150):
                loaded = codecs._numbers_v1(body, schema)
                if loaded is None:
                    declined.append(1)
                else:
                    np.testing.assert_array_equal(loaded["sequences"].features, x)
        except Exception as exc:  # an IndexError from the pool, a wrong batch
            failed.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert (failed, declined) == ([], [])
    assert 1 <= len(codecs._IDLE_PARSERS) <= 8
    assert len({id(p) for p in codecs._IDLE_PARSERS}) == len(codecs._IDLE_PARSERS)


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_json_numbers_path_never_loads_what_the_schema_refuses(data):
    """Random nestings of numbers, booleans, nulls and strings under `sequences`, spaced or not, with an `id` that
    may hold brackets and escapes: whatever the numbers path loads, orjson and the schema load the same."""
    import json

    from service.codecs import _numbers_v1
    from service.schemas import predict_schema

    schema = predict_schema(NAMES6, 4, 10)
    leaf = st.one_of(st.floats(-1e3, 1e3), st.integers(-5, 5), st.booleans(), st.none(), st.just("["))
    step = st.one_of(st.lists(leaf, min_size=5, max_size=7), leaf, st.lists(st.lists(leaf, max_size=2), max_size=6))
    exact = st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6)
    value = st.lists(st.lists(st.one_of(exact, exact, step), min_size=0, max_size=3), min_size=0, max_size=3)
    body: dict = {"sequences": data.draw(value)}
    if data.draw(st.booleans()):
        body["id"] = data.draw(st.text(alphabet='[]ab\\"', max_size=4))
    text = json.dumps(body, indent=data.draw(st.sampled_from([None, 1]))).encode()
    fast, full = _numbers_v1(text, schema), _schema_path(schema, text)
    if fast is not None:
        assert not isinstance(full, Exception), text
        _same_load(fast, full)


def test_quick_load_equals_the_schema_or_declines():
    """The v1 bodies' fast path (service.schemas.quick_load) gives exactly what marshmallow's load gives for
    well-formed bodies, and declines (None) whatever load would refuse, so that load writes the error."""
    from marshmallow import ValidationError

    from service.schemas import predict_schema, quick_load, stream_schema

    names = ("ax", "ay", "az", "gx", "gy", "gz")
    schema = predict_schema(names, 4, 10)
    rng = np.random.default_rng(0)
    good = [
        {"sequences": rng.normal(size=(2, 3, 6)).tolist()},
        {"sequences": [rng.normal(size=(2, 6)).tolist(), rng.normal(size=(5, 6)).tolist()], "outputs": ["logits"]},
        {"sequences": [[dict(zip(names, range(6), strict=True))]], "id": "r1"},
        {"sequences": [[[1, 0, 1.0, 0.0, 2, -1], [0.5] * 6]]},  # exact 0s and 1s, ints among floats
    ]
    for body in good:
        fast, full = quick_load(schema, body), schema.load(body)
        assert fast.keys() == full.keys()
        np.testing.assert_array_equal(fast["sequences"].features, full["sequences"].features)
        np.testing.assert_array_equal(fast["sequences"].lengths, full["sequences"].lengths)
        assert (fast["outputs"], fast.get("id")) == (full["outputs"], full.get("id"))
    bad = [
        [],
        {"sequences": [[[0.0] * 5]]},
        {"sequences": [[[0.0] * 6]], "extra": 1},
        {"sequences": [[[0.0] * 6]] * 5},
        {"sequences": [[[0.0] * 6]], "outputs": ["nope"]},
        {"sequences": [[[0.0] * 6]], "outputs": []},
        {"outputs": ["labels"]},
        {"sequences": [[[True] + [0.0] * 5]]},
        {"sequences": [[[0.5] * 6, [0.0] * 5 + [False]]]},
        {"sequences": [[[0.5] * 6], [[0.0] * 5 + ["1"]]]},
        {"sequences": [[[0.0] * 5 + [[1.0]]]]},
        {"sequences": [[[0.0] * 5 + [None]]]},
        {"sequences": [[[0.0] * 6, [0.0] * 7]]},
        {"sequences": [[[0.0] * 5 + [1e39]]]},  # beyond float32
    ]
    for body in bad:
        assert quick_load(schema, body) is None
        if isinstance(body, dict):
            with pytest.raises(ValidationError):
                schema.load(body)
    stream = stream_schema(names, 10)
    assert quick_load(stream, {"timesteps": [[0.0] * 6], "state": None})["timesteps"].shape == (1, 6)
    assert quick_load(stream, {"timesteps": [[0.0] * 6], "state": 3}) is None
