"""Bad input gets a clear 4xx with a JSON body that says what is wrong and where; never a 500, never a crash,
and it does not disturb anyone else's requests.

The table of cases runs against an app in this process (routing, codecs and the error handler need no server); a
representative row of each kind runs again through gunicorn, with what only a server shows: refusals under
concurrent good traffic, and keep-alive connections that survive every refusal."""

from __future__ import annotations

import gzip
import http.client
import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service.errors import Conflict, ServiceError
from tests.service.conftest import InProcess, Server, build_app, start_server

# The model repository API is on (a token), so that a request without it shows its 401.
LIMITS = {"max_body_bytes": 200_000, "max_sequences": 8, "max_timesteps": 50, "admin_token": "error-table-token-0123"}
STEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
PREDICT = "/v1/models/lstm_step/predict"
INFER = "/v2/models/lstm_step/infer"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def limited(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(model_repository, tmp_path_factory.mktemp("limited") / "gunicorn.log", **LIMITS)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def limited_app(model_repository: Path) -> Iterator[InProcess]:
    app = build_app(model_repository, **LIMITS)
    yield app
    app.close()


@dataclass
class Case:
    id: str
    status: int
    where: str  # must appear in the error message: the location and the problem
    body: Any = None  # JSON-encoded unless bytes
    path: str = PREDICT
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))

    @property
    def data(self) -> bytes | None:
        return self.body if isinstance(self.body, bytes | type(None)) else orjson.dumps(self.body)

    def send(self, target: Server | InProcess):
        headers = dict(self.headers)
        if self.status == 413:
            # gunicorn's gthread worker closes the connection after a body refused unread, though its answer says
            # keep-alive; the gevent default drains it (test_refused_requests_keep_the_connection_alive).
            headers["Connection"] = "close"
        return target.request(self.method, self.path, data=self.data, headers=headers)


def seq(n: int = 2) -> list[list[float]]:
    return [STEP] * n


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def raw(shape: str, body: bytes, **headers: str) -> dict[str, Any]:
    return {"body": body, "headers": {"Content-Type": "application/octet-stream", "Seqserve-Shape": shape, **headers}}


def v2(inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"path": INFER, "body": {"inputs": inputs, **extra}, "headers": {}}


FEATURES = {"name": "features", "shape": [1, 2, 6], "datatype": "FP32", "data": STEP * 2}
with_nan = np.ones((1, 4, 6), dtype=np.float32)
with_nan[0, 1, 2] = np.nan

V1_CASES = [
    Case("malformed-json", 400, "body is not valid JSON", b'{"sequences": [[[1, 2'),
    Case("empty-body", 400, "empty body", b""),
    Case("nan-literal", 400, "not valid JSON", b'{"sequences": [[[NaN, 1, 2, 3, 4, 5]]]}'),
    Case("infinity-literal", 400, "not valid JSON", b'{"sequences": [[[Infinity, 1, 2, 3, 4, 5]]]}'),
    Case("body-not-object", 422, "body: expected a JSON object", [1, 2]),
    Case("missing-sequences", 422, "sequences: Missing data for required field", {}),
    Case("unknown-field", 422, "temperature: Unknown field", {"sequences": [seq()], "temperature": 2}),
    Case("sequences-not-list", 422, "sequences: expected a list of sequences, got int", {"sequences": 5}),
    Case("empty-batch", 422, "sequences: empty batch", {"sequences": []}),
    Case("empty-sequence", 422, "sequences[1]: empty sequence", {"sequences": [seq(), []]}),
    Case("sequence-not-list", 422, "sequences[0]: expected a sequence", {"sequences": [5]}),
    Case("timestep-not-list", 422, "sequences[0][0]: expected a timestep", {"sequences": [[1, 2, 3]]}),
    Case(
        "wrong-feature-count",
        422,
        "sequences[3][17]: expected 6 features, got 5",
        {"sequences": [seq(20)] * 3 + [[*seq(17), STEP[:5], *seq(2)]]},
    ),
    Case(
        "string-value",
        422,
        "sequences[0][1][2]: expected a number, got a string",
        {"sequences": [[STEP, [0.1, 0.2, "0.3", 0.4, 0.5, 0.6]]]},
    ),
    Case(
        "boolean-value",
        422,
        "sequences[1][0][5]: expected a number, got a boolean",
        {"sequences": [seq(), [[0.1, 0.2, 0.3, 0.4, 0.5, True]]]},
    ),
    Case(
        "null-value", 422, "sequences[0][0][0]: expected a number, got null", {"sequences": [[[None, 1, 2, 3, 4, 5]]]}
    ),
    Case(
        "nested-too-deep",
        422,
        "sequences[0][0][0]: expected a number, got a list",
        {"sequences": [[[[1], 2, 3, 4, 5, 6]]]},
    ),
    Case(
        "float32-overflow",
        422,
        "sequences[0][0][3]: value 1e+39 is not a finite float32",
        {"sequences": [[[0, 0, 0, 1e39, 0, 0]]]},
    ),
    Case(
        "missing-named-feature",
        422,
        "sequences[0][0]: missing features ['gz']",
        {"sequences": [[{"ax": 1, "ay": 1, "az": 1, "gx": 1, "gy": 1}]]},
    ),
    Case(
        "unknown-named-feature",
        422,
        "sequences[0][1]: unknown features ['speed']",
        {
            "sequences": [
                [
                    dict(zip(["ax", "ay", "az", "gx", "gy", "gz"], STEP, strict=True)),
                    {**dict(zip(["ax", "ay", "az", "gx", "gy", "gz"], STEP, strict=True)), "speed": 3},
                ]
            ]
        },
    ),
    Case("too-many-sequences", 422, "sequences: 9 sequences exceed the limit of 8", {"sequences": [seq(1)] * 9}),
    Case(
        "too-many-timesteps", 422, "sequences[1]: 51 timesteps exceed the limit of 50", {"sequences": [seq(3), seq(51)]}
    ),
    Case("bad-output-name", 422, "outputs[0]: Must be one of", {"sequences": [seq()], "outputs": ["colour"]}),
    Case("empty-outputs", 422, "outputs: Shorter than minimum length 1", {"sequences": [seq()], "outputs": []}),
    Case("id-too-long", 422, "id: Longer than maximum length 128", {"sequences": [seq()], "id": "x" * 129}),
    Case("unknown-model", 404, "model 'nope' not found", {"sequences": [seq()]}, path="/v1/models/nope/predict"),
    Case(
        "unknown-version",
        404,
        "model 'lstm_step' has no version 7",
        {"sequences": [seq()]},
        path="/v1/models/lstm_step/versions/7/predict",
    ),
    Case(
        "version-not-integer",
        400,
        "version: Not a valid integer",
        {"sequences": [seq()]},
        path="/v1/models/lstm_step/versions/abc/predict",
    ),
    Case(
        "version-zero",
        400,
        "version: must be a positive integer",
        {"sequences": [seq()]},
        path="/v1/models/lstm_step/versions/0/predict",
    ),
    Case(
        "bad-model-name", 400, "name: not a valid model name", {"sequences": [seq()]}, path="/v1/models/-bad-/predict"
    ),
    Case("wrong-method", 405, "GET is not allowed on /v1/models/lstm_step/predict; allowed:", method="GET"),
    Case("unknown-route", 404, "no endpoint at /v1/predict", {"sequences": [seq()]}, path="/v1/predict"),
    Case(
        "wrong-content-type",
        415,
        "Content-Type 'text/csv' is not supported",
        b"1,2,3",
        headers={"Content-Type": "text/csv"},
    ),
    Case(
        "unknown-content-encoding",
        400,
        "Content-Encoding 'br' is not supported",
        b"{}",
        headers={**JSON, "Content-Encoding": "br"},
    ),
    Case("not-gzip", 400, "body is not valid gzip", b"plain text", headers={**JSON, "Content-Encoding": "gzip"}),
    Case(
        "gzip-bomb",
        413,
        "decompressed body exceeds 200000 bytes",
        gzip.compress(b" " * 300_000),
        headers={**JSON, "Content-Encoding": "gzip"},
    ),
    Case("body-too-large", 413, "body exceeds the limit of 200000 bytes", b"[" + b"0," * 150_000 + b"0]"),
    Case(
        "raw-byte-count",
        400,
        "body: 20 bytes, but Seqserve-Shape [1, 2, 6] of float32 needs 48",
        **raw("1,2,6", b"\0" * 20),
    ),
    Case(
        "raw-missing-shape",
        400,
        "shape: Missing data for required field",
        b"\0" * 24,
        headers={"Content-Type": "application/octet-stream"},
    ),
    Case("raw-malformed-shape", 400, "shape: expected 'B,T,F'", **raw("1x2x6", b"\0" * 48)),
    Case("raw-feature-count", 422, "features: expected 6 features per timestep, got 5", **raw("1,2,5", b"\0" * 40)),
    Case("raw-nan", 422, "sequences[0][1][2]: value nan is not finite", **raw("1,4,6", with_nan.tobytes())),
    Case(
        "raw-length-range",
        422,
        "lengths[1]: 9 is outside 1..4",
        **raw("2,4,6", np.zeros((2, 4, 6), np.float32).tobytes(), **{"Seqserve-Lengths": "4,9"}),
    ),
    Case(
        "raw-length-count",
        422,
        "lengths: expected 2 values",
        **raw("2,4,6", np.zeros((2, 4, 6), np.float32).tobytes(), **{"Seqserve-Lengths": "4"}),
    ),
    Case(
        "raw-bad-outputs",
        400,
        "outputs: expected a comma-separated subset",
        path=PREDICT + "?outputs=everything",
        **raw("1,1,6", np.zeros((1, 1, 6), np.float32).tobytes()),
    ),
    Case(
        "npy-garbage",
        400,
        "body is not a readable .npy array",
        b"not numpy",
        headers={"Content-Type": "application/x-npy"},
    ),
    Case(
        "npy-two-dimensional",
        400,
        "expected a 3-D float array [B, T, F], got float32 [4, 6]",
        npy(np.zeros((4, 6), np.float32)),
        headers={"Content-Type": "application/x-npy"},
    ),
]

V2_CASES = [
    Case("v2-malformed-json", 400, "body is not valid JSON", b"{", path=INFER, headers={}),
    Case("v2-missing-inputs", 400, "inputs: Missing data for required field", {}, path=INFER, headers={}),
    Case("v2-empty-inputs", 400, "inputs: Shorter than minimum length 1", **v2([])),
    Case("v2-unknown-input", 400, "unexpected inference input 'pressure'", **v2([{**FEATURES, "name": "pressure"}])),
    Case("v2-duplicate-input", 400, "input 'features' appears twice", **v2([FEATURES, FEATURES])),
    Case(
        "v2-missing-features",
        400,
        "input 'features' is required",
        **v2([{"name": "lengths", "shape": [1], "datatype": "INT64", "data": [2]}]),
    ),
    Case(
        "v2-wrong-datatype",
        400,
        "input 'features': datatype INT32, the model expects FP32",
        **v2([{**FEATURES, "datatype": "INT32"}]),
    ),
    Case("v2-unknown-datatype", 400, "inputs[0].datatype: Must be one of", **v2([{**FEATURES, "datatype": "F32"}])),
    Case(
        "v2-count-mismatch",
        400,
        "input 'features': 12 values in data, shape [1, 3, 6] needs 18",
        **v2([{**FEATURES, "shape": [1, 3, 6]}]),
    ),
    Case(
        "v2-feature-dim",
        400,
        "input 'features': dimension 2 is 5, expected 6",
        **v2([{**FEATURES, "shape": [1, 2, 5], "data": [0.0] * 10}]),
    ),
    Case("v2-rank", 400, "shape [12] has 1 dimensions, expected [-1, -1, 6]", **v2([{**FEATURES, "shape": [12]}])),
    Case(
        "v2-string-data",
        400,
        "inputs[0].data: data[3]: expected a number, got a string",
        **v2([{**FEATURES, "data": [0.1, 0.2, 0.3, "x"] + [0.0] * 8}]),
    ),
    Case(
        "v2-nested-ragged",
        400,
        "inputs[0].data: data[0][1][0][0]: ragged nesting",
        **v2([{**FEATURES, "data": [[[0.1] * 6, [[0.1] * 6]]]}]),
    ),
    Case(
        "v2-lengths-range",
        400,
        "lengths[0]: 9 is outside 1..2",
        **v2([FEATURES, {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [9]}]),
    ),
    Case(
        "v2-lengths-not-integer",
        400,
        "input 'lengths': INT64 data must hold integers",
        **v2([FEATURES, {"name": "lengths", "shape": [1], "datatype": "INT64", "data": [1.5]}]),
    ),
    Case(
        "v2-unknown-output",
        400,
        "unexpected inference output 'embedding'",
        **v2([FEATURES], outputs=[{"name": "embedding"}]),
    ),
    Case("v2-unknown-field", 400, "priority: Unknown field", **v2([FEATURES], priority=3)),
    Case("v2-unknown-model", 404, "model 'nope' not found", **{**v2([FEATURES]), "path": "/v2/models/nope/infer"}),
    Case(
        "v2-header-length-not-int",
        400,
        "Inference-Header-Content-Length 'ten' is not an integer",
        b"{}",
        path=INFER,
        headers={"Inference-Header-Content-Length": "ten"},
    ),
    Case(
        "v2-header-length-too-big",
        400,
        "Inference-Header-Content-Length 99 does not fit a body of 2 bytes",
        b"{}",
        path=INFER,
        headers={"Inference-Header-Content-Length": "99"},
    ),
    Case(
        "v2-binary-size",
        400,
        "binary_data_size 8, shape [1, 2, 6] of FP32 needs 48 bytes",
        **v2([{**{k: v for k, v in FEATURES.items() if k != "data"}, "parameters": {"binary_data_size": 8}}]),
    ),
    Case(
        "v2-wrong-method", 405, "GET is not allowed on /v2/models/lstm_step/infer", path=INFER, method="GET", headers={}
    ),
    Case(
        "v2-body-too-large", 413, "body exceeds the limit of 200000 bytes", b"[" + b"0," * 150_000 + b"0]", path=INFER
    ),
]


def binary_v2_case(name: str, status: int, where: str, header: dict[str, Any], blob: bytes) -> Case:
    head = orjson.dumps(header)
    return Case(
        name, status, where, head + blob, path=INFER, headers={"Inference-Header-Content-Length": str(len(head))}
    )


BINARY_INPUT = {"name": "features", "shape": [1, 2, 6], "datatype": "FP32", "parameters": {"binary_data_size": 48}}
V2_CASES += [
    binary_v2_case(
        "v2-binary-short",
        400,
        "input 'features': binary data ends after 40 of 48 bytes",
        {"inputs": [BINARY_INPUT]},
        b"\0" * 40,
    ),
    binary_v2_case(
        "v2-binary-extra",
        400,
        "binary body has 4 bytes that no input's binary_data_size claims",
        {"inputs": [BINARY_INPUT]},
        b"\0" * 52,
    ),
    binary_v2_case(
        "v2-binary-nan",
        400,
        "sequences[0][1][2]: value nan is not finite",
        {"inputs": [{**BINARY_INPUT, "shape": [1, 4, 6], "parameters": {"binary_data_size": 96}}]},
        with_nan.tobytes(),
    ),
]


V2_CASES += [
    Case("v2-repository-no-token", 401, "needs the header 'Authorization: Bearer", {}, "/v2/repository/index"),
]
CASES = V1_CASES + V2_CASES
# One row of each status and body kind, for each API, sent again through gunicorn.
THROUGH_GUNICORN = {
    "malformed-json",
    "wrong-feature-count",
    "unknown-model",
    "wrong-method",
    "wrong-content-type",
    "gzip-bomb",
    "body-too-large",
    "raw-byte-count",
    "npy-two-dimensional",
    "v2-count-mismatch",
    "v2-binary-short",
    "v2-unknown-model",
    "v2-body-too-large",
}


def client_errors() -> dict[int, str]:
    """status -> code of every 4xx error the service defines (the classes of service.errors), and the router's 405."""
    found, todo = {405: "method_not_allowed"}, [ServiceError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if 400 <= cls.status < 500:
            found[cls.status] = cls.code
    return found


def assert_located(case: Case, response: Any) -> None:
    assert response.status_code == case.status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    if case.path.startswith("/v2"):
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
        message = body["error"]
    else:
        error = body["error"]
        assert set(error) == {"code", "message", "details", "request_id"}
        assert error["code"]
        assert error["code"] == client_errors()[case.status]
        assert error["request_id"] == response.headers["X-Request-ID"]
        message = error["message"]
    assert case.where in message


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_request_is_a_located_4xx(limited_app: InProcess, case: Case) -> None:
    assert_located(case, case.send(limited_app))


@pytest.mark.parametrize("case", [c for c in CASES if c.id in THROUGH_GUNICORN], ids=lambda c: c.id)
def test_bad_request_is_a_located_4xx_through_gunicorn(limited: Server, case: Case) -> None:
    assert_located(case, case.send(limited))


def test_table_covers_every_client_error_of_each_api() -> None:
    """A new 4xx error class, or one an API stops producing, shows up here: every status the service defines has a
    row for each API that can answer it. The V2 protocol answers unusable content with 400 (no 422) and reads
    every body as its own JSON or binary framing (no 415). 409 needs a sequence another request moved on: the
    streaming tests cover it; 403 needs the repository API off (tests/reliability/test_repository_api.py). The
    repository API (401) exists on V2 only."""
    statuses = set(client_errors()) - {Conflict.status, 403}
    assert statuses - {401} <= {c.status for c in V1_CASES}
    assert statuses - {422, 415} == {c.status for c in V2_CASES}
    assert set(THROUGH_GUNICORN) <= {c.id for c in CASES}
    assert len({c.id for c in CASES}) == len(CASES)


def test_located_errors_keep_marshmallow_paths(limited_app: InProcess) -> None:
    body = {"sequences": [seq(3), [STEP, STEP[:5], [0, 0, 0, 0, 0, "x"]]]}
    details = Case("paths", 422, "", body).send(limited_app).json()["error"]["details"]
    assert details == {
        "sequences": {"1": {"1": ["expected 6 features, got 5"], "2": {"5": ["expected a number, got a string"]}}}
    }


def test_bad_requests_do_not_disturb_good_ones(limited: Server) -> None:
    """Good requests run alongside a stream of bad ones; every good answer is right, no bad one is a 5xx."""
    good_body = {"sequences": [seq(5)]}
    expected = Case("good", 200, "", good_body).send(limited).json()["predictions"]
    failures: list[str] = []

    def hammer(cases: list[Case], check: Callable[[Any], str | None]) -> None:
        for _ in range(3):
            for case in cases:
                problem = check(case.send(limited))
                if problem:
                    failures.append(problem)

    def good(response: Any) -> str | None:
        if response.status_code != 200 or response.json()["predictions"] != expected:
            return f"good request got {response.status_code}"
        return None

    def bad(response: Any) -> str | None:
        return f"bad request got {response.status_code}" if response.status_code >= 500 else None

    threads = [threading.Thread(target=hammer, args=(V1_CASES + V2_CASES, bad)) for _ in range(2)]
    threads.append(threading.Thread(target=hammer, args=([Case("good", 200, "", good_body)] * 20, good)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert limited.get("/ready").status_code == 200
    assert "Traceback" not in limited.logs()


def test_refused_requests_keep_the_connection_alive(limited: Server) -> None:
    """Every row of the table on one keep-alive connection, 413s included: the views read the body before they
    refuse it and gunicorn's gevent worker drains what the app left unread, so no refusal costs the client its
    connection (a closed one would break the next request)."""
    host, port = limited.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.connect()
        opened = connection.sock
        for case in CASES:
            connection.request(case.method, case.path, body=case.data, headers=case.headers)
            response = connection.getresponse()
            response.read()
            assert response.status == case.status, case.id
            assert not response.will_close, case.id
            assert connection.sock is opened, case.id
    finally:
        connection.close()
