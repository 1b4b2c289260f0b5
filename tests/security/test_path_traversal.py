"""Model names and versions cannot leave the repository: names match `NAME_PATTERN` and are looked up among the
versions the loader found (never joined to a path), versions are positive integers. Sent raw over a socket, so no
client normalises `..` or decodes `%2F` on our behalf; a good model waits next to the repository (`outside_model`)
and in the docs' asset folder's parents, and nothing reaches it."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import orjson
import pytest

NAMES = [
    "..",
    "../outside_model",
    "..%2Foutside_model",
    "..%2foutside_model",
    "%2e%2e%2foutside_model",
    "%2E%2E",
    "..%5Coutside_model",
    "%252e%252e%252foutside_model",
    "lstm_step%2F..%2F..%2Foutside_model",
    "lstm_step%00",
    "%2Fetc%2Fpasswd",
    "~",
    ".hidden",
    "outside_model",
    "a" * 65,
]
VERSIONS = ["..", "..%2F1", "0", "-1", "1.0", "1e0", "%31%2F..", "1%00", "99999999999999999999999"]
ROUTES_BY_NAME = [
    ("GET", "/v1/models/{n}"),
    ("POST", "/v1/models/{n}/predict"),
    ("GET", "/v2/models/{n}"),
    ("GET", "/v2/models/{n}/ready"),
    ("GET", "/v2/models/{n}/config"),
    ("POST", "/v2/models/{n}/infer"),
]
ROUTES_BY_VERSION = [
    ("POST", "/v1/models/lstm_step/versions/{v}/predict"),
    ("GET", "/v2/models/lstm_step/versions/{v}"),
    ("POST", "/v2/models/lstm_step/versions/{v}/infer"),
    ("GET", "/v2/models/lstm_step/versions/{v}/config"),
]
BODY = orjson.dumps({"sequences": [[[0.1] * 6]]})


def raw_request(url: str, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """An HTTP/1.1 request with the target exactly as given (no normalisation, no re-encoding)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def check_refused(status: int, body: bytes, target: str) -> None:
    assert status in (400, 404), (target, status, body[:300])
    assert b'"model_name"' not in body, (target, body[:300])
    assert b'"versions"' not in body, (target, body[:300])


@pytest.mark.parametrize("name", NAMES)
def test_names_cannot_leave_the_repository(hostile, name):
    for method, route in ROUTES_BY_NAME:
        target = route.format(n=name)
        status, body = raw_request(hostile.url, method, target, BODY if method == "POST" else b"")
        check_refused(status, body, target)


@pytest.mark.parametrize("version", VERSIONS)
def test_versions_cannot_leave_the_repository(hostile, version):
    for method, route in ROUTES_BY_VERSION:
        target = route.format(v=version)
        status, body = raw_request(hostile.url, method, target, BODY if method == "POST" else b"")
        check_refused(status, body, target)


def test_the_good_model_next_door_exists_but_is_not_served(hostile, hostile_repository):
    assert (hostile_repository.parent / "outside_model" / "1" / "model.onnx").is_file()
    assert "outside_model" not in hostile.get("/v1/models").text
    status, _ = raw_request(hostile.url, "POST", "/v1/models/lstm_step/predict", BODY)
    assert status == 200  # the same request on a real name is served: the refusals above are about the names


@pytest.mark.parametrize(
    "target",
    [
        "/docs/static/../../../../etc/passwd",
        "/docs/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/docs/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/docs/static/..%5C..%5Csetup.py",
        "/docs/static//etc/passwd",
        "/static/..%2F..%2Fservice%2Fsettings.py",
        "/docs/static/..%2F__init__.py",
    ],
)
def test_static_assets_cannot_leave_their_folder(hostile, target):
    status, body = raw_request(hostile.url, "GET", target)
    assert status in (308, 400, 404), (target, status)  # 308: `//` merged, within the site
    assert b"root:" not in body
    assert b"import" not in body
    followed = hostile.get(target)  # requests follows the redirect
    assert followed.status_code in (400, 404), (target, followed.url)
    assert "root:" not in followed.text
