"""The KServe V2 protocol as the stock tritonclient.http client speaks it to gunicorn: JSON and binary, both
directions. What the client cannot send (nested JSON data) is checked against the app in process."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.test_predict import ort_alone


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([12, 3, 7], dtype=np.int64)
    features = rng.normal(size=(3, 12, 6)).astype(np.float32)
    return features, lengths


def test_server_and_model_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lstm_step")
    assert client.is_model_ready("gru_last", "1")
    assert client.is_model_ready("gru_last", "01")  # the version is an integer, however it is written
    assert not client.is_model_ready("gru_last", "7")
    assert not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata("lstm_step")
    assert meta["versions"] == ["1"]
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["features"] == {"name": "features", "datatype": "FP32", "shape": [-1, -1, 6]}
    assert inputs["lengths"]["datatype"] == "INT64"
    assert {"h0", "c0"} <= set(inputs)  # a unidirectional LSTM can stream
    assert {t["name"] for t in meta["outputs"]} == {"probabilities", "logits", "hn", "cn"}
    bidirectional = client.get_model_metadata("gru_last")
    assert [t["name"] for t in bidirectional["inputs"]] == ["features", "lengths"]
    config = client.get_model_config("lstm_step")
    assert config["max_batch_size"] == 0
    assert config["input"][0] == {"name": "features", "data_type": "TYPE_FP32", "dims": [-1, -1, 6]}
    assert all(t["optional"] for t in config["input"][1:])


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
@pytest.mark.parametrize("name", ["lstm_step", "gru_last"])
def test_infer_equals_onnxruntime(client, ort_sessions, name, binary_in, binary_out):
    features, lengths = batch()
    inputs = [
        triton.InferInput("features", list(features.shape), "FP32"),
        triton.InferInput("lengths", list(lengths.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(features, binary_data=binary_in)
    inputs[1].set_data_from_numpy(lengths, binary_data=binary_in)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary_out)]
    result = client.infer(name, inputs, outputs=outputs, request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    probabilities = result.as_numpy("probabilities")
    for i, length in enumerate(lengths):
        expected = ort_alone(ort_sessions[name], features[i, :length])
        got = probabilities[i, :length] if name == "lstm_step" else probabilities[i]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_lengths_optional_means_full_length(client, ort_sessions):
    features, _ = batch(1)
    inp = triton.InferInput("features", list(features.shape), "FP32")
    inp.set_data_from_numpy(features)
    probabilities = client.infer("lstm_step", [inp]).as_numpy("probabilities")
    for i in range(len(features)):
        np.testing.assert_allclose(probabilities[i], ort_alone(ort_sessions["lstm_step"], features[i]), atol=1e-5)


def test_streaming_state_through_v2(client):
    """Two chunks with the state carried over equal the whole sequence in one go."""
    features = np.random.default_rng(2).normal(size=(1, 30, 6)).astype(np.float32)

    def run(chunk: np.ndarray, state: dict[str, np.ndarray]):
        inputs = []
        for name, array in {"features": chunk, **state}.items():
            tensor = triton.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        wanted = [triton.InferRequestedOutput(n) for n in ("probabilities", "hn", "cn")]
        return client.infer("lstm_step", inputs, outputs=wanted)

    whole = run(features, {}).as_numpy("probabilities")
    first = run(features[:, :18], {})
    second = run(features[:, 18:], {"h0": first.as_numpy("hn"), "c0": first.as_numpy("cn")})
    streamed = np.concatenate([first.as_numpy("probabilities"), second.as_numpy("probabilities")], axis=1)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)


def test_v2_error_envelope_through_tritonclient(client):
    inp = triton.InferInput("features", [1, 2, 5], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 2, 5), np.float32))
    with pytest.raises(InferenceServerException, match=r"dimension 2 is 5, expected 6") as raised:
        client.infer("lstm_step", [inp])
    assert raised.value.status() == "400"
    with pytest.raises(InferenceServerException, match="not found") as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "404"


def test_non_finite_values_are_refused_in_sequences_and_in_padding(client):
    """V2 takes the features tensor as given, padding past `lengths` included: a NaN there is refused too."""
    features, lengths = batch(4)
    cases = [
        ((1, 2, 4), r"sequences\[1\]\[2\]\[4\]: value nan is not finite"),  # inside sequence 1 (3 steps)
        ((1, 5, 0), r"input 'features': holds values that are not finite"),  # past its length: padding
    ]
    for (i, t, f), message in cases:
        bad = features.copy()
        bad[i, t, f] = np.nan
        inputs = [triton.InferInput("features", list(bad.shape), "FP32"), triton.InferInput("lengths", [3], "INT64")]
        inputs[0].set_data_from_numpy(bad, binary_data=True)
        inputs[1].set_data_from_numpy(lengths, binary_data=True)
        with pytest.raises(InferenceServerException, match=message) as raised:
            client.infer("lstm_step", inputs)
        assert raised.value.status() == "400"


def test_nested_json_data_is_accepted(app_client):
    features, _lengths = batch(3)
    flat = app_client.post(
        "/v2/models/lstm_step/infer",
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(features.shape),
                    "datatype": "FP32",
                    "data": features.ravel().tolist(),
                }
            ]
        },
    )
    nested = app_client.post(
        "/v2/models/lstm_step/infer",
        {
            "inputs": [
                {"name": "features", "shape": list(features.shape), "datatype": "FP32", "data": features.tolist()}
            ]
        },
    )
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["outputs"] == nested.json()["outputs"]


def tritonclient_header(**sequence) -> dict:
    """The JSON header the stock client sends for binary tensors (and binary outputs), as it builds it."""
    import orjson

    features, lengths = batch()
    tensors = [triton.InferInput("features", list(features.shape), "FP32"), triton.InferInput("lengths", [3], "INT64")]
    tensors[0].set_data_from_numpy(features, binary_data=True)
    tensors[1].set_data_from_numpy(lengths, binary_data=True)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=True)]
    body, length = triton.InferenceServerClient.generate_request_body(
        tensors, outputs, request_id="r-1", parameters=None, **sequence
    )
    return orjson.loads(body[:length])


def test_quick_infer_header_equals_the_schema_or_declines():
    """The V2 binary header's fast path (service.schemas.quick_infer_header) loads what the stock client sends to
    exactly what InferRequestSchema loads; every header one edit away from it (each field set to each awkward
    value, or added where it does not belong) it either declines (None, and the schema writes the error) or loads
    to what the schema loads."""
    import copy

    from marshmallow import ValidationError

    from service.schemas import InferRequestSchema, quick_infer_header

    schema = InferRequestSchema()
    for header in (tritonclient_header(), tritonclient_header(sequence_id=7, sequence_start=True)):
        assert quick_infer_header(header) is not None
        assert quick_infer_header(header) == schema.load(header)
    assert quick_infer_header({"inputs": [{"name": "features", "shape": [1], "datatype": "FP32", "data": [1]}]}) is None

    base = tritonclient_header(sequence_id="s", sequence_end=True)
    places = [((), k) for k in ("id", "parameters", "inputs", "outputs", "extra")]
    places += [(("inputs", 0), k) for k in ("name", "shape", "datatype", "parameters", "data", "extra")]
    places += [(("inputs", 0, "shape"), 0), (("inputs", 1, "parameters"), "binary_data_size"), (("inputs",), 0)]
    places += [(("outputs", 0), k) for k in ("name", "parameters", "extra")] + [(("outputs",), 0)]
    places += [(("parameters",), "sequence_id"), (("inputs", 0, "parameters"), "other")]
    values = [None, True, False, -1, 0, 3, 2**64, 1.5, float("nan"), "", "x", "x" * 129, "FP32", "INT64", "BYTES"]
    values += [[], [1], [-1], [True], {}, {"binary_data_size": 4}, {1: 2}, [{"name": "a"}]]
    accepted = 0
    for path, key in places:
        for value in values:
            header = copy.deepcopy(base)
            target = header
            for step in path:
                target = target[step]
            target[key] = value
            fast = quick_infer_header(header)
            try:
                full = schema.load(header)
            except ValidationError:
                assert fast is None, header
                continue
            assert fast is None or fast == full, header
            accepted += fast is not None
    assert accepted > 20  # the fast path is taken for more than the one header


# ------------------------------------------------------------------------- planned headers (service/codecs.py)


def _manifest(repository, name):
    from modelrepo import layout

    return layout.read_version(layout.VersionDir(name, 1, repository / name / "1"))


def _binary_body(features, lengths=None, **header):
    tensors = [("features", "FP32", features)] + ([("lengths", "INT64", lengths)] if lengths is not None else [])
    head = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": t, "parameters": {"binary_data_size": a.nbytes}}
            for n, t, a in tensors
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        **header,
    }
    encoded = orjson.dumps(head)
    return encoded + b"".join(a.tobytes() for _, _, a in tensors), str(len(encoded))


def test_a_repeated_v2_header_is_planned_and_answers_and_refuses_as_the_full_path(model_repository, monkeypatch):
    """A V2 binary header that passed every check is kept as a plan by its bytes: the next request with the same
    header reads only its tensors. It must give the same request, and for every fault that only the tensors can hold
    (too few bytes, too many, a lengths value out of range, NaN inside a sequence or in its padding) the same error
    as the full path, which decodes and checks the header again."""
    from service import codecs

    manifest, limits = _manifest(model_repository, "lstm_step"), codecs.Limits(64, 100)
    monkeypatch.setattr(codecs, "_PLANS", {})
    decoded = []
    monkeypatch.setattr(codecs, "decode_json", lambda b, decode=codecs.decode_json: decoded.append(b) or decode(b))
    features, lengths = batch(5)
    body, header_length = _binary_body(features, lengths, id="r1", parameters={"sequence_id": 7})
    full = codecs.v2_request(body, header_length, manifest, limits)
    assert len(decoded) == 1
    assert len(codecs._PLANS) == 1
    planned = codecs.v2_request(body, header_length, manifest, limits)
    assert len(decoded) == 1, "the same header again should be served by its plan"
    assert list(planned.inputs) == list(full.inputs) == ["features", "lengths"]
    for name in full.inputs:
        np.testing.assert_array_equal(planned.inputs[name], full.inputs[name])
    assert (planned.outputs, planned.id, planned.parameters) == (full.outputs, full.id, full.parameters)
    assert planned.parameters is not full.parameters  # each request gets its own dicts

    def with_nan(i, t, f):
        bad = features.copy()
        bad[i, t, f] = np.nan
        return _binary_body(bad, lengths, id="r1", parameters={"sequence_id": 7})[0]

    faults = {
        "binary data ends early": body[:-8],
        "bytes no input claims": body + b"\0" * 4,
        "a length out of range": _binary_body(features, lengths + 1, id="r1", parameters={"sequence_id": 7})[0],
        "NaN inside a sequence": with_nan(1, 2, 4),
        "NaN in the padding": with_nan(1, 5, 0),
    }
    for what, bad in faults.items():
        codecs.v2_request(body, header_length, manifest, limits)  # the plan is there
        calls = len(decoded)
        with pytest.raises(codecs.CodecError) as through_plan:
            codecs.v2_request(bad, header_length, manifest, limits)
        assert len(decoded) == calls, f"{what}: should have gone through the plan"
        codecs._PLANS.clear()
        with pytest.raises(codecs.CodecError) as through_header:
            codecs.v2_request(bad, header_length, manifest, limits)
        assert len(decoded) == calls + 1
        got, want = through_plan.value, through_header.value
        assert (got.message, got.details, got.unreadable) == (want.message, want.details, want.unreadable), what
        assert not codecs._PLANS, f"{what}: a refused request should leave no plan"


def test_v2_plans_are_per_model_version_binary_only_and_bounded(model_repository, monkeypatch):
    from service import codecs

    lstm, gru = _manifest(model_repository, "lstm_step"), _manifest(model_repository, "gru_last")
    limits = codecs.Limits(64, 100)
    monkeypatch.setattr(codecs, "_PLANS", {})
    features, lengths = batch(6)
    body, header_length = _binary_body(features, lengths)
    codecs.v2_request(body, header_length, lstm, limits)
    codecs.v2_request(body, header_length, gru, limits)  # the same bytes for another model: a plan of its own
    assert {plan.manifest.name for plan in codecs._PLANS.values()} == {"lstm_step", "gru_last"}

    codecs._PLANS.clear()
    mixed = orjson.dumps({"inputs": [{"name": "features", "shape": [1, 2, 6], "datatype": "FP32", "data": [0.5] * 12}]})
    codecs.v2_request(mixed, str(len(mixed)), lstm, limits)  # data in the header: not a binary request
    assert not codecs._PLANS

    monkeypatch.setattr(codecs, "PLANS_KEPT", 2)
    for n in range(5):
        codecs.v2_request(*_binary_body(features, lengths, id=f"r{n}"), lstm, limits)
        assert len(codecs._PLANS) <= 2
