"""What one request may cost is bounded: body size (with or without Content-Length), decompressed size (gzip bombs),
JSON nesting depth, and declared shapes (a small body declaring a huge tensor is refused before anything that size
is allocated: the worker's peak memory, VmHWM, does not move). Against the hostile server (one worker, 200,000-byte
bodies)."""

from __future__ import annotations

import gzip
import io
import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.reliability.fuzz_support import worker_pids

LIMIT = 200_000
PREDICT = "/v1/models/lstm_step/predict"
INFER = "/v2/models/lstm_step/infer"
JSON = {"Content-Type": "application/json", "Connection": "close"}


def peak_rss_kib(server) -> int:
    (pid,) = worker_pids(server)
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def post(server, path: str, data: bytes, **headers: str):
    return server.session.post(server.url + path, data=data, headers={**JSON, **headers}, timeout=60)


def test_a_body_above_the_limit_is_refused(hostile):
    answer = post(hostile, PREDICT, b" " * (LIMIT + 1))
    assert answer.status_code == 413
    assert answer.json()["error"]["message"] == f"body exceeds the limit of {LIMIT} bytes"


def test_a_chunked_body_above_the_limit_is_refused(hostile):
    """No Content-Length: the limit holds while the body streams in."""
    host, port = urlsplit(hostile.url).hostname, urlsplit(hostile.url).port
    chunk = b" " * 50_000
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        try:
            for _ in range(8):  # 400,000 bytes offered
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the end: what we want
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


@pytest.mark.parametrize("path", [PREDICT, INFER])
def test_a_gzip_bomb_is_refused_without_expanding_it(hostile, path):
    bomb = gzip.compress(b"\0" * (150 * 1024 * 1024), compresslevel=9)  # 150 MiB in ~150 KB
    assert len(bomb) < LIMIT
    before = peak_rss_kib(hostile)
    answer = post(hostile, path, bomb, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert f"decompressed body exceeds {LIMIT} bytes" in answer.text
    assert peak_rss_kib(hostile) - before < 20 * 1024  # KiB: nowhere near 150 MiB


def nested(depth: int) -> bytes:
    return b"[" * depth + b"0.5" + b"]" * depth


@pytest.mark.parametrize("depth", [40, 900, 90_000])  # 90,000: beyond the parser's limit, within the body's
def test_deep_nesting_is_refused_and_located(hostile, depth):
    v1 = post(hostile, PREDICT, b'{"sequences": ' + nested(depth) + b"}")
    v2 = post(hostile, INFER, b'{"inputs": [{"name": "features", "shape": [1, 1, 6], "datatype": "FP32", "data": '
              + nested(depth) + b"}]}")  # fmt: skip
    if depth > 1000:  # beyond the JSON parser's own limit
        assert (v1.status_code, v2.status_code) == (400, 400)
        assert "body is not valid JSON" in v1.json()["error"]["message"]
        assert "body is not valid JSON" in v2.json()["error"]
    else:
        assert v1.status_code == 422
        assert v1.json()["error"]["message"].startswith("sequences[0][0]: ")
        assert v2.status_code == 400
        message = v2.json()["error"]
        if depth > 64:  # beyond numpy's dimensions: located by the walk, which stops at 32 levels
            assert message.startswith("inputs[0].data: data" + "[0]" * 33 + ": nested deeper than 32 levels")
        else:
            assert message == "input 'features': 1 values in data, shape [1, 1, 6] needs 6"


def v2_binary(shape: list[int], size: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {"inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}]}
    ).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 24


HUGE = [
    ("v2 binary shape", INFER, *v2_binary([2**40, 2**20, 6], 24, b"\0" * 24), "binary_data_size 24, shape"),
    ("v2 binary size", INFER, *v2_binary([2**20, 2**10, 6], 2**20 * 2**10 * 24, b"\0" * 24), "binary data ends after"),
    ("v2 wrapping shape", INFER, *v2_binary([2**61, 8, 6], 0, b""), "binary_data_size 0, shape"),
    ("npy header", PREDICT, npy_declaring((2**30, 2**20, 6)), {"Content-Type": "application/x-npy"}, "header declares"),
    (
        "raw shape",
        PREDICT,
        b"\0" * 24,
        {"Content-Type": "application/octet-stream", "Seqserve-Shape": "1000000000,1000000000,6"},
        "Seqserve-Shape [1000000000, 1000000000, 6] of float32 needs",
    ),
]


@pytest.mark.parametrize(("case", "path", "body", "headers", "message"), HUGE, ids=[h[0] for h in HUGE])
def test_huge_declared_shapes_are_refused_without_allocating(hostile, case, path, body, headers, message):
    before = peak_rss_kib(hostile)
    answer = post(hostile, path, body, **headers)
    assert answer.status_code == 400, answer.text
    assert message in answer.text
    assert peak_rss_kib(hostile) - before < 20 * 1024
