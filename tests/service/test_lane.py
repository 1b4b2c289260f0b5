"""The inference lane (service/lane.py) answers exactly as Flask does: the same requests, sent to an app with the
lane and to one without it (`fast_path=false`), get the same status, headers and body, for answers and for every
kind of refusal; the lane really takes the common requests and passes the others (gzip, query strings, other
methods and paths) to Flask; and its requests are counted and logged under the same labels."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from service.lane import ROUTES, InferenceLane
from tests.conftest import FEATURE_NAMES
from tests.service.conftest import Answer

RID = {"X-Request-ID": "parity-1"}
COMPARED = ("Content-Type", "Content-Length", "X-Request-ID", "Retry-After", "Inference-Header-Content-Length")


def _features(steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, len(FEATURE_NAMES))).astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _v2_binary(features: np.ndarray, header_extra: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, *features.shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": features.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            **(header_extra or {}),
        }
    )
    return header + features.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _json(body: Any) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(body), {"Content-Type": "application/json"}


X = _features(12)
V2_BINARY, V2_BINARY_HEADERS = _v2_binary(X)
V2_JSON_INPUT = {
    "name": "features",
    "shape": [1, 12, len(FEATURE_NAMES)],
    "datatype": "FP32",
    "data": X.ravel().tolist(),
}
# (what it shows, path, body, headers): answers and refusals of every kind the inference endpoints give
CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("v1 JSON", "/v1/models/lstm_step/predict", *_json({"sequences": [X.tolist(), X[:5].tolist()], "id": "a"})),
    ("v1 JSON, version", "/v1/models/lstm_step/versions/1/predict", *_json({"sequences": [X.tolist()]})),
    ("v1 JSON, last head", "/v1/models/gru_last/predict", *_json({"sequences": [X.tolist()], "outputs": ["logits"]})),
    (
        "v1 raw float32",
        "/v1/models/lstm_step/predict",
        X.tobytes(),
        {"Content-Type": "application/octet-stream", "Seqserve-Shape": f"1,12,{len(FEATURE_NAMES)}"},
    ),
    ("v1 .npy", "/v1/models/lstm_step/predict", _npy(X[None]), {"Content-Type": "application/x-npy"}),
    ("V2 JSON", "/v2/models/lstm_step/infer", *_json({"inputs": [V2_JSON_INPUT]})),
    ("V2 binary", "/v2/models/lstm_step/infer", V2_BINARY, V2_BINARY_HEADERS),
    ("V2 binary, version", "/v2/models/lstm_step/versions/1/infer", V2_BINARY, V2_BINARY_HEADERS),
    # refusals
    ("malformed JSON", "/v1/models/lstm_step/predict", b'{"sequences": [', {"Content-Type": "application/json"}),
    (
        "located schema error",
        "/v1/models/lstm_step/predict",
        *_json({"sequences": [[[1, 2, 3, 4, 5, "x"]] * 3, [[1, 2, 3]]]}),
    ),
    ("unknown model", "/v1/models/nope/predict", *_json({"sequences": [X.tolist()]})),
    ("unknown version", "/v1/models/lstm_step/versions/9/predict", *_json({"sequences": [X.tolist()]})),
    ("bad model name", "/v1/models/a..b/predict", *_json({"sequences": [X.tolist()]})),
    ("bad version", "/v2/models/lstm_step/versions/x/infer", V2_BINARY, V2_BINARY_HEADERS),
    ("unsupported media type", "/v1/models/lstm_step/predict", b"a,b", {"Content-Type": "text/csv"}),
    (
        "raw body without shape",
        "/v1/models/lstm_step/predict",
        X.tobytes(),
        {"Content-Type": "application/octet-stream"},
    ),
    ("V2 JSON bad shape", "/v2/models/lstm_step/infer", *_json({"inputs": [{**V2_JSON_INPUT, "shape": [1, 5, 6]}]})),
    (
        "V2 header length past the body",
        "/v2/models/lstm_step/infer",
        V2_BINARY,
        {**V2_BINARY_HEADERS, "Inference-Header-Content-Length": str(len(V2_BINARY) + 1)},
    ),
    (
        "V2 sequence on a bidirectional model",
        "/v2/models/gru_last/infer",
        *_v2_binary(X, {"parameters": {"sequence_id": 5, "sequence_start": True}}),
    ),
    ("V2 sequence without START", "/v2/models/lstm_step/infer", *_v2_binary(X, {"parameters": {"sequence_id": 77}})),
    ("stream, bad token", "/v1/models/lstm_step/stream", *_json({"timesteps": X.tolist(), "state": "garbage"})),
    ("stream, bidirectional", "/v1/models/gru_last/stream", *_json({"timesteps": X.tolist()})),
]


@pytest.fixture(scope="module")
def doors(model_repository) -> Any:
    """One app with the lane (the default) and one without, on the same repository; a spy counts what the lane
    passes on to Flask."""
    from tests.service.conftest import build_app

    lane, flask = build_app(model_repository), build_app(model_repository, fast_path="false")
    assert isinstance(lane.app.wsgi_app, InferenceLane)
    assert not isinstance(flask.app.wsgi_app, InferenceLane)
    passed: list[str] = []
    inner = lane.app.wsgi_app.flask

    def spy(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        passed.append(environ["PATH_INFO"])
        return inner(environ, start_response)

    lane.app.wsgi_app.flask = spy
    yield lane, flask, passed
    lane.close()
    flask.close()


def _same(a: Answer, b: Answer, what: str) -> None:
    assert a.status_code == b.status_code, (what, a.text, b.text)
    assert a.content == b.content, (what, a.text[:300], b.text[:300])
    for name in COMPARED:
        assert a.headers.get(name) == b.headers.get(name), (what, name, a.headers, b.headers)


@pytest.mark.parametrize(("what", "path", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_lane_answers_as_flask(doors, what, path, body, headers):
    lane, flask, passed = doors
    before = len(passed)
    ours = lane.post(path, data=body, headers={**headers, **RID})
    theirs = flask.post(path, data=body, headers={**headers, **RID})
    _same(ours, theirs, what)
    assert len(passed) == before, f"the lane passed {what!r} to Flask"
    assert ours.headers["X-Request-ID"] == "parity-1"


def test_lane_refusals_cover_every_status(doors):
    """The cases above reach every status the inference endpoints answer with, bar 503/504 (overload, timeouts:
    tests/reliability) and 409 (a version gone mid-stream: tests/service/streams)."""
    lane, _, _ = doors
    statuses = {lane.post(path, data=body, headers=headers).status_code for _, path, body, headers in CASES}
    assert statuses == {200, 400, 404, 415, 422}


def test_stream_through_both_doors(doors):
    """A stream's answers through the lane equal Flask's (tokens differ: each app signs with its own key)."""
    lane, flask, passed = doors
    before = len(passed)
    answers = []
    for door in (lane, flask):
        first = door.post("/v1/models/lstm_step/stream", {"timesteps": X[:5].tolist()}).json()
        second = door.post("/v1/models/lstm_step/stream", {"timesteps": X[5:].tolist(), "state": first["state"]})
        assert second.status_code == 200, second.text
        answers.append((first, second.json()))
    (a1, a2), (b1, b2) = answers
    for a, b in ((a1, b1), (a2, b2)):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k != "state"} == {k: v for k, v in b.items() if k != "state"}
    assert len(passed) == before


# (what, method, path, body, headers): requests for Flask
PASSED_ON = [
    (
        "gzip body",
        "POST",
        "/v1/models/lstm_step/predict",
        gzip.compress(_json({"sequences": [X.tolist()]})[0]),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ),
    (
        "query string",
        "POST",
        "/v1/models/lstm_step/predict?outputs=labels",
        X.tobytes(),
        {"Content-Type": "application/octet-stream", "Seqserve-Shape": f"1,12,{len(FEATURE_NAMES)}"},
    ),
    ("GET", "GET", "/v1/models/lstm_step/predict", None, {}),
    ("no Content-Length", "POST", "/v1/models/lstm_step/predict", b"", {"Content-Type": "application/json"}),
    ("trailing slash", "POST", "/v1/models/lstm_step/predict/", *_json({"sequences": [X.tolist()]})),
    ("other endpoint", "POST", "/v1/models/lstm_step/inspect", *_json({"sequence": X.tolist()})),
    ("v1 path, V2 action", "POST", "/v1/models/lstm_step/infer", V2_BINARY, V2_BINARY_HEADERS),
]


@pytest.mark.parametrize(("what", "method", "path", "body", "headers"), PASSED_ON, ids=[c[0] for c in PASSED_ON])
def test_lane_passes_the_rest_to_flask(doors, what, method, path, body, headers):
    lane, flask, passed = doors
    before = len(passed)
    ours = lane.request(method, path, data=body, headers={**headers, **RID})
    theirs = flask.request(method, path, data=body, headers={**headers, **RID})
    _same(ours, theirs, what)
    assert passed[before:] == [path.split("?")[0]], what


def test_lane_routes_are_flasks_rules(doors):
    """The lane labels its requests' metrics with Flask's rule strings: each must be a POST rule of the app."""
    lane, _, _ = doors
    rules = {rule.rule: rule for rule in lane.app.url_map.iter_rules()}
    for route in ROUTES.values():
        for rule in route.rules:
            assert rule in rules, rule
            assert "POST" in rules[rule].methods, rule


def test_lane_requests_are_counted_and_logged(model_repository, capfd):
    """Through the lane, a request is counted under its endpoint rule, model and status, and logged, as through
    Flask."""
    from tests.service.conftest import build_app

    body, headers = _json({"sequences": [X.tolist()]})
    for fast in ("true", "false"):
        app = build_app(model_repository, fast_path=fast, log_requests="true")
        try:
            assert app.post("/v1/models/lstm_step/predict", data=body, headers={**headers, **RID}).status_code == 200
            assert app.post("/v1/models/nope/predict", data=body, headers=headers).status_code == 404
            text = app.get("/metrics").text
        finally:
            app.close()  # flushes its access lines
        for labels in ('model="lstm_step",status="200"', 'model="",status="404"'):
            sample = f'seqserve_requests_total{{endpoint="/v1/models/<name>/predict",{labels}}} 1.0'
            assert sample in text, (fast, sample, text)
        assert (
            'seqserve_request_duration_seconds_count{endpoint="/v1/models/<name>/predict",model="lstm_step"} 1.0'
            in text
        )
        lines = [orjson.loads(line) for line in capfd.readouterr().err.splitlines() if '"seqserve.access"' in line]
        assert [(line["path"], line["status"], line["model"], line["request_id"]) for line in lines] == [
            ("/v1/models/lstm_step/predict", 200, "lstm_step", "parity-1"),
            ("/v1/models/nope/predict", 404, None, lines[1]["request_id"]),
        ], fast
