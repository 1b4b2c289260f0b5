"""hypothesis-generated tensors and malformed V2 binary bodies, sent over HTTP to a real gunicorn.

- Valid tensors get the same predictions in every encoding (v1 JSON, raw float32, .npy; V2 JSON and binary).
- Any float32 values (NaN, infinities, subnormals, extremes) in binary bodies: 200, or a 4xx that names the
  sequence, timestep and feature (v1 ignores the padding past a sequence's length; V2 refuses a non-finite value
  anywhere in the tensor).
- A valid V2 binary request broken in one way (header length, truncated tensor, binary_data_size, declared shape,
  trailing bytes, datatype): 400 whose message says what is wrong and where.
- JSON nested to any depth, anywhere in either API's body: a located 4xx.
- gzip bodies that expand to around the limit or far past it: 413 exactly when the expansion passes the limit.
Never a 5xx; afterwards the server has the same workers and no traceback in its log.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.reliability.fuzz_support import ServerWatch
from tests.service.conftest import Server, start_server

FEATURES = 6
PREDICT = "/v1/models/lstm_step/predict"
INFER = "/v2/models/lstm_step/infer"
LIMIT = 100_000  # bytes of body, before and after gunzip
FUZZ = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def target(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("bodies") / "gunicorn.log"
    server = start_server(model_repository, log, max_body_bytes=LIMIT)
    watch = ServerWatch(server)
    yield server
    assert watch.problems() == []
    assert server.stop() == 0


@st.composite
def batches(draw: st.DrawFn, elements: st.SearchStrategy[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """features [B, T, 6] float32 and lengths [B] (each 1..T, at least one T)."""
    batch, steps = draw(st.integers(1, 4)), draw(st.integers(1, 16))
    values = st.floats(-1e4, 1e4, width=32, allow_nan=False) if elements is None else elements
    features = draw(arrays(np.float32, (batch, steps, FEATURES), elements=values))
    lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    lengths[draw(st.integers(0, batch - 1))] = steps
    return features, np.array(lengths, dtype=np.int64)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def v2_binary(features: np.ndarray, lengths: np.ndarray) -> tuple[bytes, dict[str, str]]:
    blobs = [features.astype("<f4").tobytes(), lengths.astype("<i8").tobytes()]
    header = json.dumps(
        {
            "inputs": [
                {"name": "features", "shape": list(features.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": len(blobs[0])}},
                {"name": "lengths", "shape": [len(lengths)], "datatype": "INT64",
                 "parameters": {"binary_data_size": len(blobs[1])}},
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def send(server: Server, path: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    answer = server.session.post(server.url + path, data=body, headers=headers, timeout=60)
    assert answer.status_code < 500, (path, answer.status_code, answer.text[:500])
    return answer


def v1_probabilities(answer: requests.Response) -> list[np.ndarray]:
    assert answer.status_code == 200, answer.text[:500]
    return [np.array(p["probabilities"], dtype=np.float32) for p in answer.json()["predictions"]]


def v2_probabilities(answer: requests.Response, lengths: np.ndarray) -> list[np.ndarray]:
    assert answer.status_code == 200, answer.text[:500]
    size = int(answer.headers["Inference-Header-Content-Length"])
    header = json.loads(answer.content[:size])
    shape = header["outputs"][0]["shape"]
    full = np.frombuffer(answer.content[size:], dtype="<f4").reshape(shape)
    return [full[i, :n] for i, n in enumerate(lengths.tolist())]


@FUZZ
@given(batch=batches())
def test_generated_tensors_get_the_same_answer_in_every_encoding(target: Server, batch: Any):
    features, lengths = batch
    sequences = [features[i, :n].tolist() for i, n in enumerate(lengths.tolist())]
    raw_headers = {"Content-Type": "application/octet-stream", "Seqserve-Shape": ",".join(map(str, features.shape)),
                   "Seqserve-Lengths": ",".join(map(str, lengths.tolist()))}  # fmt: skip
    answers = {
        "json": v1_probabilities(send(target, PREDICT, json.dumps({"sequences": sequences}).encode(), {
            "Content-Type": "application/json"})),
        "raw": v1_probabilities(send(target, PREDICT, features.tobytes(), raw_headers)),
        "npy": v1_probabilities(send(target, PREDICT, npy(features), {
            "Content-Type": "application/x-npy", "Seqserve-Lengths": raw_headers["Seqserve-Lengths"]})),
        "v2": v2_probabilities(send(target, INFER, *v2_binary(features, lengths)), lengths),
    }  # fmt: skip
    for name, probabilities in answers.items():
        for i, n in enumerate(lengths.tolist()):
            assert probabilities[i].shape == (n, 3), name
            np.testing.assert_allclose(probabilities[i], answers["json"][i], rtol=1e-4, atol=1e-5, err_msg=name)


ANY_FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@FUZZ
@given(batch=batches(ANY_FLOAT32), binary=st.booleans())
def test_any_float32_values_are_answered_or_located(target: Server, batch: Any, binary: bool):
    features, lengths = batch
    if binary:
        answer = send(target, INFER, *v2_binary(features, lengths))
    else:
        headers = {"Content-Type": "application/octet-stream", "Seqserve-Shape": ",".join(map(str, features.shape)),
                   "Seqserve-Lengths": ",".join(map(str, lengths.tolist()))}  # fmt: skip
        answer = send(target, PREDICT, features.tobytes(), headers)
    inside = np.broadcast_to(np.arange(features.shape[1])[None, :, None] < lengths[:, None, None], features.shape)
    # v1 ignores the padding past each sequence's length; V2 takes the tensor as a whole, padding included
    if np.isfinite(features if binary else features[inside]).all():
        assert answer.status_code == 200, answer.text[:300]
        return
    assert answer.status_code in (400, 422), answer.text[:300]
    message = answer.json()["error"] if binary else answer.json()["error"]["message"]
    assert "not finite" in message
    if np.isfinite(features[inside]).all():  # V2, non-finite padding only
        assert message == "input 'features': holds values that are not finite"
    else:
        i, t, f = (int(v) for v in np.argwhere(~np.isfinite(features) & inside)[0])
        assert message.startswith(f"sequences[{i}][{t}][{f}]: "), message


def _not_an_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


def _mutations(draw: st.DrawFn, body: bytes, header_length: int) -> tuple[bytes, str, str]:
    """One way to break a valid binary request: (body, header length to send, what the error must say)."""
    header, binary = json.loads(body[:header_length]), body[header_length:]
    kind = draw(st.sampled_from(["length", "not-int", "truncate", "size", "shape", "huge", "trailing", "datatype"]))
    features = header["inputs"][0]
    if kind == "length":
        value = draw(st.one_of(st.integers(max_value=0), st.integers(len(body) + 1, 2**70)))
        return body, str(value), f"Inference-Header-Content-Length {value} does not fit"
    if kind == "not-int":
        value = draw(st.text("0123456789.xe-", min_size=1, max_size=12).filter(_not_an_integer))
        return body, value, "Inference-Header-Content-Length"
    if kind == "truncate":
        cut = draw(st.integers(1, len(binary)))
        return body[: len(body) - cut], str(header_length), "binary"
    if kind == "size":
        size = features["parameters"]["binary_data_size"]
        features["parameters"]["binary_data_size"] = draw(st.integers(0, 2**40).filter(lambda s: s != size))
        expected = "input 'features': binary_data_size"
    elif kind == "shape":
        features["shape"][1] += draw(st.integers(1, 50))
        expected = "input 'features': binary_data_size"
    elif kind == "huge":
        features["shape"] = [draw(st.integers(2**31, 2**62)), draw(st.integers(2**20, 2**40)), FEATURES]
        expected = "input 'features': binary_data_size"
    elif kind == "trailing":
        extra = draw(st.binary(min_size=1, max_size=64))
        return body + extra, str(header_length), "bytes that no input's binary_data_size claims"
    else:
        features["datatype"] = draw(st.sampled_from(["FP16", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES"]))
        expected = "input 'features': datatype"
    new_header = json.dumps(header).encode()
    return new_header + binary, str(len(new_header)), expected


@st.composite
def broken_requests(draw: st.DrawFn) -> tuple[bytes, str, str]:
    features, lengths = draw(batches())
    body, headers = v2_binary(features, lengths)
    return _mutations(draw, body, int(headers["Inference-Header-Content-Length"]))


@settings(FUZZ, max_examples=200)
@given(broken=broken_requests())
def test_malformed_v2_binary_bodies_get_located_400s(target: Server, broken: tuple[bytes, str, str]):
    body, header_length, expected = broken
    answer = send(target, INFER, body, {"Inference-Header-Content-Length": header_length})
    assert answer.status_code == 400, answer.text[:300]
    assert expected in answer.json()["error"], answer.json()["error"]


@FUZZ
@given(depth=st.integers(1, 3000), where=st.sampled_from(["sequences", "timestep", "data", "parameters"]))
def test_nesting_at_any_depth_is_refused_and_located(target: Server, depth: int, where: str):
    deep = "[" * depth + "0.5" + "]" * depth
    template = {
        "sequences": '{"sequences": DEEP}',
        "timestep": '{"sequences": [[DEEP]]}',
        "data": '{"inputs": [{"name": "features", "shape": [1, 1, 6], "datatype": "FP32", "data": DEEP}]}',
        "parameters": '{"parameters": {"x": DEEP}, "inputs": []}',
    }[where]
    body = template.replace("DEEP", deep)
    path = PREDICT if where in ("sequences", "timestep") else INFER
    answer = send(target, path, body.encode(), {"Content-Type": "application/json"})
    assert answer.status_code in (400, 422), answer.text[:300]
    error = answer.json()["error"]
    message = error if path == INFER else error["message"]
    assert message.startswith(("body is not valid JSON", "sequences", "inputs", "input 'features'")), message


@FUZZ
@given(size=st.one_of(st.integers(LIMIT - 2000, LIMIT + 2000), st.integers(LIMIT, 400 * LIMIT)),
       path=st.sampled_from([PREDICT, INFER]))  # fmt: skip
def test_gzip_bodies_are_bounded_once_expanded(target: Server, size: int, path: str):
    body = gzip.compress(b" " * size, compresslevel=9)
    answer = send(target, path, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    if size > LIMIT:
        assert answer.status_code == 413, answer.text[:300]
        assert f"decompressed body exceeds {LIMIT} bytes" in answer.text
    else:  # expanded fine: only spaces, which is not JSON
        assert answer.status_code == 400, answer.text[:300]
        assert "body is not valid JSON" in answer.text or "empty body" in answer.text
