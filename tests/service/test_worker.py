"""The gevent worker's direct path (service/worker.py), over raw sockets to real gunicorn servers: it answers the
inference lane's requests byte for byte as stock gunicorn with Flask does (`fast_path=false`, where gunicorn's own
request handling and Flask answer everything), hands every other request to gunicorn on the same connection
(pipelined or not), and keeps gunicorn's connection rules: keep-alive, `Connection: close`, the keep-alive
timeout, a client that leaves mid-body, `max_requests`, and its own handling whenever gunicorn is set up for more
(an access log)."""

from __future__ import annotations

import gzip
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from gunicorn.config import Config

from service.settings import Settings
from service.worker import head_limits, parse_head
from tests.service.conftest import Server, start_server
from tests.service.test_lane import CASES, RID, V2_BINARY, V2_BINARY_HEADERS, X, _json

V1 = "/v1/models/lstm_step/predict"


@dataclass(frozen=True)
class Raw:
    """One response as it came off the socket."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def without_date(self) -> tuple[str, list[tuple[str, str]], bytes]:
        return self.status_line, [(k, v) for k, v in self.headers if k != "Date"], self.body


class Wire:
    """A raw HTTP/1.1 connection: send bytes, read responses one by one (framed by Content-Length)."""

    def __init__(self, server: Server, timeout: float = 20.0) -> None:
        url = urlsplit(server.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def response(self) -> Raw:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a whole head: {self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k, v.strip()) for k, v in (line.split(":", 1) for line in lines)]
        raw = Raw(status_line, headers, b"")
        length = int(raw.header("Content-Length") or 0)
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed mid-body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Raw(status_line, headers, body)

    def closed_by_server(self, within: float) -> bool:
        """The server closes the connection within `within` seconds (and sends nothing more)."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def request(
    path: str, body: bytes = b"", headers: dict[str, str] | None = None, method: str = "POST", version: str = "1.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST" and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(server: Server, data: bytes, responses: int = 1) -> list[Raw]:
    wire = Wire(server)
    try:
        wire.send(data)
        return [wire.response() for _ in range(responses)]
    finally:
        wire.close()


@pytest.fixture(scope="module")
def stock(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """gunicorn's own request handling and Flask for every request: what the direct path must answer like."""
    s = start_server(model_repository, tmp_path_factory.mktemp("stock") / "gunicorn.log", fast_path="false")
    yield s
    assert s.stop() == 0, s.logs()


@pytest.fixture(scope="module")
def short(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker, a 1 s keep-alive timeout and `max_requests` of 5 (through GUNICORN_CMD_ARGS)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GUNICORN_CMD_ARGS", "--max-requests 5")
        s = start_server(model_repository, tmp_path_factory.mktemp("short") / "gunicorn.log", workers=1, keepalive=1)
    yield s
    assert s.stop() == 0, s.logs()


# ------------------------------------------------------------------------------------------ which heads it takes

LIMITS = head_limits(Config())
PLAIN = b"POST /v1/models/m/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"


def _with(*extra: bytes) -> bytes:
    return PLAIN[:-2] + b"".join(x + b"\r\n" for x in extra) + b"\r\n"


@pytest.mark.parametrize(
    ("what", "head"),
    [
        ("a GET", PLAIN.replace(b"POST", b"GET", 1)),
        ("HTTP/1.0", PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        ("a query string", PLAIN.replace(b"predict", b"predict?outputs=labels", 1)),
        ("a percent-escape", PLAIN.replace(b"/m/", b"/%6d/", 1)),
        ("a byte beyond ASCII", PLAIN.replace(b"/m/", b"/\xe9/", 1)),
        ("an absolute URI", PLAIN.replace(b"/v1/", b"http://a/v1/", 1)),
        ("an empty line first", b"\r\n" + PLAIN),
        ("Transfer-Encoding", _with(b"Transfer-Encoding: chunked")),
        ("Expect", _with(b"Expect: 100-continue")),
        ("Upgrade", _with(b"Upgrade: h2c")),
        ("a repeated header", _with(b"Content-Type: text/plain")),
        ("a repeated header, other case", _with(b"content-length: 2")),
        ("an underscore in a name", _with(b"X_Forwarded_For: 1.2.3.4")),
        ("Connection: upgrade", _with(b"Connection: upgrade")),
        ("a folded line", _with(b"X-A: b", b" c")),
        ("an invalid name", _with(b"X A: b")),
        ("a control byte in a value", _with(b"X-A: b\x01c")),
        ("an incomplete head", PLAIN[:-2]),
        ("more header fields than gunicorn allows", _with(*(b"X-%d: a" % i for i in range(100)))),
        ("a longer line than gunicorn allows", PLAIN.replace(b"/m/", b"/" + b"m" * 5000 + b"/", 1)),
    ],
)
def test_heads_left_to_gunicorn(what, head):
    assert parse_head(head, LIMITS) is None, what


def test_head_limits_are_gunicorns():
    """Normalised as gunicorn's Request does before it calls the same C parser: 0 is unbounded (1 MiB) for the
    request line, and out-of-range values fall back to gunicorn's maxima."""
    config = Config()
    assert head_limits(config) == {
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    }
    for name, value in (("limit_request_line", 0), ("limit_request_fields", 0), ("limit_request_field_size", 0)):
        config.set(name, value)
    assert head_limits(config) == {
        "limit_request_line": 1024 * 1024,
        "limit_request_fields": 32768,
        "limit_request_field_size": 8190,
    }


def test_plain_head_taken():
    plain = parse_head(_with(b"X-Request-ID:  abc ", b"Connection: close"), LIMITS)
    assert plain is not None
    assert (plain.method, plain.path, plain.close) == ("POST", "/v1/models/m/predict", True)
    assert plain.header("x-request-id") == "abc"  # optional whitespace around a value is not part of it
    assert plain.header("Content-Length") == "2"
    assert plain.consumed == len(_with(b"X-Request-ID:  abc ", b"Connection: close"))
    assert parse_head(PLAIN, LIMITS).close is False


# ---------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(("what", "path", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_answers_as_gunicorn(server, stock, what, path, body, headers):
    """Status line, every header but Date, in order, and the body: the same bytes."""
    data = request(path, body, {**headers, **RID})
    ours, theirs = exchange(server, data)[0], exchange(stock, data)[0]
    assert ours.without_date() == theirs.without_date(), what
    assert ours.header("Date") is not None


def test_pipelined_mix_on_one_connection(server):
    """Lane requests and gunicorn's (a probe, a gzip body, a query string, a 404) sent at once on one connection
    come back in order, each as it would alone."""
    body, headers = _json({"sequences": [X.tolist()]})
    headers = {**headers, **RID}
    lane_json = request(V1, body, headers)
    sent = [
        lane_json,
        request("/health", method="GET"),
        request("/v2/models/lstm_step/infer", V2_BINARY, {**V2_BINARY_HEADERS, **RID}),
        request(V1, gzip.compress(body), {**headers, "Content-Encoding": "gzip"}),
        request("/nowhere", b"{}", RID),
        request(V1 + "?outputs=labels", body, headers),
        lane_json,
    ]
    alone = [exchange(server, data)[0] for data in sent]
    together = exchange(server, b"".join(sent), len(sent))
    assert [r.status for r in together] == [200, 200, 200, 200, 404, 200, 200]
    for one, other in zip(alone, together, strict=True):
        assert (one.status_line, one.body) == (other.status_line, other.body)
        assert one.header("Connection") == other.header("Connection") == "keep-alive"


def test_body_in_pieces(server):
    """A head and a body that arrive in several packets, with pauses, make one request."""
    data = request(V1, *_json({"sequences": [X.tolist()]}))
    whole = exchange(server, data)[0]
    wire = Wire(server)
    try:
        for start in range(0, len(data), 97):
            wire.send(data[start : start + 97])
            time.sleep(0.005)
        pieces = wire.response()
    finally:
        wire.close()
    assert pieces.status == 200
    assert pieces.body == whole.body


def test_body_longer_than_a_read_with_the_next_request_behind_it(server):
    """A body longer than the worker's first read (64 KB), sent in one write with the next request right behind
    it: the rest of the body is received without taking any byte of the next request."""
    sequences = [X.tolist()] * 200
    big = request(V1, *_json({"sequences": sequences}))
    small = request(V1, *_json({"sequences": [X.tolist()]}))
    assert len(big) > 64 * 1024
    alone = [exchange(server, data)[0] for data in (big, small)]
    together = exchange(server, big + small + big, 3)
    assert [r.status for r in together] == [200, 200, 200]
    assert [r.body for r in together] == [alone[0].body, alone[1].body, alone[0].body]
    assert len(orjson.loads(together[0].body)["predictions"]) == 200


def test_connection_close(server):
    body, headers = _json({"sequences": [X.tolist()]})
    wire = Wire(server)
    try:
        wire.send(request(V1, body, {**headers, "Connection": "close"}))
        answer = wire.response()
        assert (answer.status, answer.header("Connection")) == (200, "close")
        assert wire.closed_by_server(within=5)
    finally:
        wire.close()


@pytest.mark.parametrize("what", ["HTTP/1.0", "chunked body", "Expect: 100-continue"])
def test_what_gunicorn_frames_is_answered_by_gunicorn(server, stock, what):
    """HTTP/1.0, a chunked body and `Expect: 100-continue` go to gunicorn, and get its answers."""
    body, headers = _json({"sequences": [X.tolist()]})
    headers = {**headers, **RID}
    answers = []
    for target in (server, stock):
        wire = Wire(target)
        try:
            if what == "HTTP/1.0":
                wire.send(request(V1, body, headers, version="1.0"))
            elif what == "chunked body":
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:100], body[100:]))
                wire.send(request(V1, chunks + b"0\r\n\r\n", {**headers, "Transfer-Encoding": "chunked"}))
            else:
                wire.send(request(V1, b"", {**headers, "Expect": "100-continue", "Content-Length": str(len(body))}))
                assert wire.response().status_line == "HTTP/1.1 100 Continue"
                wire.send(body)
            answers.append(wire.response())
        finally:
            wire.close()
    ours, theirs = answers
    assert ours.status == 200, ours.body
    assert ours.without_date() == theirs.without_date()


HEAD = b"POST " + V1.encode() + b" HTTP/1.1\r\n"


@pytest.mark.parametrize(
    ("what", "head"),
    [
        ("Content-Length twice", HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}"),
        ("Content-Length and chunked", b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("a signed Content-Length", HEAD + b"Content-Length: +2\r\n\r\n{}"),
        ("a space in a header name", HEAD + b"Content Length: 2\r\n\r\n{}"),
        ("a bare LF", b"POST " + V1.encode() + b" HTTP/1.1\nX-Request-ID: parity-1\nContent-Length: 2\n\n{}"),
        ("a byte beyond ASCII in the path", b"POST /v1/models/\xe9/predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
        ("a garbage line", b"HELLO\r\n\r\n"),
    ],
)
def test_malformed_heads_answered_as_gunicorn(server, stock, what, head):
    ours, theirs = exchange(server, head)[0], exchange(stock, head)[0]
    assert 400 <= ours.status < 500, (what, ours)  # gunicorn's refusal, or (bare LF) the app's
    assert ours.without_date() == theirs.without_date(), what


def test_client_gone_mid_body(server):
    """A client that closes before its body is complete costs the worker nothing: no error, no answer, and the
    next request is served."""
    for _ in range(4):  # reach both workers
        wire = Wire(server)
        wire.send(request(V1, b'{"sequences": [[[1, 2', {"Content-Type": "application/json", "Content-Length": "500"}))
        wire.close()
    assert exchange(server, request(V1, *_json({"sequences": [X.tolist()]})))[0].status == 200
    assert "Error" not in server.logs()
    assert "Traceback" not in server.logs()


def test_idle_connection_closed_after_keepalive(short):
    wire = Wire(short)
    try:
        wire.send(request(V1, *_json({"sequences": [X.tolist()]})))
        assert wire.response().status == 200
        started = time.monotonic()
        assert wire.closed_by_server(within=5)
        assert 0.5 < time.monotonic() - started < 4
    finally:
        wire.close()


def test_max_requests_restarts_the_worker(short):
    """The request that reaches `max_requests` is answered with `Connection: close`, and a new worker serves on."""
    body, headers = _json({"sequences": [X.tolist()]})
    wire = Wire(short)
    answers = []
    try:
        for _ in range(5):
            wire.send(request(V1, body, headers))
            answers.append(wire.response())
            if answers[-1].header("Connection") == "close":
                break
        assert wire.closed_by_server(within=5)
    finally:
        wire.close()
    assert [a.status for a in answers] == [200] * len(answers)
    assert answers[-1].header("Connection") == "close"
    deadline = time.monotonic() + 60
    while "Autorestarting worker after current request" not in short.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Autorestarting worker after current request" in short.logs()
    assert exchange(short, request(V1, body, headers))[0].status == 200


def test_gunicorn_configured_for_more_keeps_its_own_handling(model_repository, tmp_path):
    """With gunicorn's own access log on, gunicorn handles every request (and logs it): the direct path does not
    do what that setting asks for."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GUNICORN_CMD_ARGS", "--access-logfile -")
        s = start_server(model_repository, tmp_path / "gunicorn.log", workers=1)
    try:
        data = request(V1, *_json({"sequences": [X.tolist()]}))
        assert exchange(s, data)[0].status == 200
        deadline = time.monotonic() + 10
        while f'"POST {V1} HTTP/1.1" 200' not in s.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f'"POST {V1} HTTP/1.1" 200' in s.logs()
    finally:
        assert s.stop() == 0, s.logs()


def test_default_server_runs_the_lane_worker(server):
    assert "Using worker: service.worker.LaneWorker" in server.logs()


GC_LINE = re.compile(r"worker (\d+): gc threshold \((\d+), (\d+), (\d+)\), (\d+) objects frozen")


def test_each_worker_freezes_what_boot_made_and_raises_the_gc_threshold(server):
    """gunicorn.conf.py's `_tune_gc`, as each worker reports the collector's state after it."""
    found = {int(m[1]): m for m in GC_LINE.finditer(server.logs())}
    assert len(found) == 2, server.logs()  # the default server's two workers, each once
    for m in found.values():
        assert int(m[2]) == Settings().gc_threshold
        assert int(m[5]) > 10_000  # Flask, numpy, onnxruntime and the app: tens of thousands of objects


def test_gc_threshold_zero_leaves_pythons_collector(model_repository, tmp_path):
    s = start_server(model_repository, tmp_path / "gunicorn.log", workers=1, gc_threshold=0)
    try:
        assert s.post(V1, {"sequences": [X.tolist()]}).status_code == 200
        assert "Booting worker" in s.logs()
        assert not GC_LINE.search(s.logs())
    finally:
        assert s.stop() == 0, s.logs()


def test_gc_threshold_must_not_be_negative():
    with pytest.raises(ValueError, match="SEQSERVE_GC_THRESHOLD must be >= 0"):
        Settings.from_mapping({"GC_THRESHOLD": "-1"})
