"""gunicorn's gevent worker, with a direct path from the connection's bytes to the inference lane.

gunicorn's own request handling (its `Request` and `Response` objects, the WSGI environ, the per-request timeout
and hooks) costs about 140 us of CPU per request on the development machine (a fifth of a small prediction's
whole cost, as much as the model run of a 50-step LSTM; bench/ab.py, docs/benchmarks.md), and the lane
(service/lane.py) answers without needing any of it. So for each request on a
connection this worker first parses the head itself, with gunicorn's own C parser (gunicorn_h1c, under
gunicorn's limits), and, when the lane takes it, reads the body by its Content-Length, runs the lane and writes
the answer in one `sendall`, with the status line and headers gunicorn would have written.

It takes a request only when nothing about it needs gunicorn's judgement: HTTP/1.1, `POST` to a lane route with
a plain path (no query, no percent-escapes), a `Content-Length`, none of Transfer-Encoding, Expect, Upgrade or
TE, a Connection header of at most `keep-alive` or `close`, and no repeated or underscore-named header. Every
other request, and every head the parser doubts, goes to gunicorn exactly as it arrived: the bytes already read
are handed to a gunicorn parser on the same socket, gunicorn serves that one request (its errors, 100-continue,
chunked bodies, Flask), and what it read beyond it comes back. So one connection can mix both, and framing is
always decided by one parser's rules.

The whole worker runs gunicorn's stock `handle` instead when the app has no lane (`SEQSERVE_FAST_PATH=false`, or
another app, such as the benchmark's bare endpoint) or when gunicorn is configured for something this path does
not do: TLS, cleartext HTTP/2, the PROXY protocol, gunicorn's access log, or request hooks of one's own.

A model call shorter than `SEQSERVE_INLINE_BELOW_MS` runs in the request's greenlet when its connection is the
worker's only one (`handle` counts them; service/runtime.py); such a greenlet never waits, so after its answer it
yields once before it reads its connection's next request.
"""

from __future__ import annotations

import errno
import time
from typing import Any

import gevent
import gunicorn_h1c
from gunicorn import SERVER, util
from gunicorn import config as gconfig
from gunicorn import http as ghttp
from gunicorn.http.message import (
    DEFAULT_MAX_HEADERFIELD_SIZE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    RFC9112_TARGET_INVALID,
)
from gunicorn.workers.ggevent import GeventWorker

HEAD_LIMIT = 64 * 1024  # a head not complete within this goes to gunicorn, which applies its own limits
READ_SIZE = 64 * 1024
_SEPARATOR = b"\r\n\r\n"
_REFUSED = frozenset({"transfer-encoding", "expect", "upgrade", "te", "http2-settings"})
_STATUS = {}  # status code -> status line


def _status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    if line is None:
        from werkzeug.http import HTTP_STATUS_CODES

        line = _STATUS[status] = f"HTTP/1.1 {status} {HTTP_STATUS_CODES[status].upper()}\r\n".encode("latin-1")
    return line


class _Date:
    """The Date header, formatted once a second (gunicorn formats it for every response)."""

    def __init__(self) -> None:
        self.second, self.value = -1, b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, util.http_date(second).encode("latin-1")
        return self.value


_date = _Date()


class Plain:
    """A parsed head the lane may take: method, path, query, header values by lower-case name, head length."""

    __slots__ = ("close", "consumed", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], consumed: int, close: bool) -> None:
        self.method, self.path, self.headers, self.consumed, self.close = method, path, headers, consumed, close

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def head_limits(cfg: Any) -> dict[str, int]:
    """gunicorn's limits on a head, normalised as its `Request` normalises them for the same C parser."""
    line, fields, size = cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
    return {
        "limit_request_line": 1024 * 1024
        if line == 0
        else MAX_REQUEST_LINE
        if not 0 < line < MAX_REQUEST_LINE
        else line,
        "limit_request_fields": MAX_HEADERS if not 0 < fields <= MAX_HEADERS else fields,
        "limit_request_field_size": size if size > 0 else DEFAULT_MAX_HEADERFIELD_SIZE,
    }


def parse_head(data: bytes | bytearray, limits: dict[str, int]) -> Plain | None:
    """The head at the start of `data` if this path may serve it; None: gunicorn's (incomplete heads included).
    `limits`: `head_limits` of gunicorn's settings."""
    try:
        result = gunicorn_h1c.parse_request(bytes(data), **limits)
    except (gunicorn_h1c.ParseError, gunicorn_h1c.IncompleteError):  # gunicorn answers, or reads on
        return None
    if result["method"] != b"POST" or result["minor_version"] != 1 or data[:2] == b"\r\n":
        return None
    target = result["path"].decode("latin-1")
    if not target.startswith("/") or "?" in target or "%" in target or "#" in target:
        return None
    if RFC9112_TARGET_INVALID.search(target):  # gunicorn refuses it (400); the C parser lets bytes >= 0x80 by
        return None
    headers: dict[str, str] = {}
    for raw_name, raw_value in result["headers"]:
        name = raw_name.decode("latin-1").lower()
        if not name or name in headers or name in _REFUSED or "_" in name:  # no name: an obsolete folded line
            return None
        headers[name] = raw_value.decode("latin-1").strip(" \t")
    connection = headers.get("connection", "keep-alive").lower()
    if connection not in ("keep-alive", "close"):
        return None
    return Plain("POST", target, headers, result["consumed"], connection == "close")


class LaneWorker(GeventWorker):
    """`worker_class = "service.worker.LaneWorker"` (gunicorn.conf.py, for SEQSERVE_WORKER_CLASS=gevent)."""

    lane: Any = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        from service.concurrency import occupancy  # the app's modules load in the worker only, never in the master
        from service.lane import lane_of

        self.lane = lane_of(self.wsgi) if self._plain_gunicorn() else None
        self.head_limits = head_limits(self.cfg)
        self.occupancy = occupancy
        occupancy.tracking = self.lane is not None  # every connection then passes `handle`, which counts it

    def _plain_gunicorn(self) -> bool:
        """gunicorn is set up for nothing that only its own request handling does."""
        cfg = self.cfg
        return (
            not cfg.is_ssl
            and cfg.http2_cleartext == "off"
            and cfg.proxy_protocol == "off"
            and cfg.accesslog is None
            and cfg.pre_request is gconfig.PreRequest.default
            and cfg.post_request is gconfig.PostRequest.default
        )

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if self.lane is None:
            super().handle(listener, client, addr)
            return
        client.setblocking(1)
        try:
            with self.occupancy:  # open connections: short model calls go inline when there is only one
                Connection(self, listener, client, addr).serve()
        finally:
            util.close(client)


class _Closed(Exception):
    """The connection ends: the client closed it, or sent nothing within the keep-alive timeout."""


class Connection:
    """One client connection: lane requests here, every other request through gunicorn."""

    def __init__(self, worker: LaneWorker, listener: Any, client: Any, addr: Any) -> None:
        self.worker, self.listener, self.client, self.addr = worker, listener, client, addr
        self.cfg = worker.cfg
        self.limits = worker.head_limits
        self.timeout = float(self.cfg.keepalive) or None  # each wait for bytes, as gunicorn waits for a head
        self.buffer = bytearray()
        self.parser: Any = None  # gunicorn's, made for the first request it serves
        self.listener_name: Any = None

    def serve(self) -> None:
        self.client.settimeout(self.timeout)
        try:
            while self.serve_one():
                pass
        except (_Closed, TimeoutError, gevent.GreenletExit, SystemExit):
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.worker.log.exception("Socket error processing request.")
        except Exception as exc:  # as gunicorn's handle does with an error it cannot place: a 500, then close
            self.worker.handle_error(None, self.client, self.addr, exc)

    def serve_one(self) -> bool:
        """Serve the next request; False: the connection is done."""
        head = self._read_head()
        taken = None if head is None else self.worker.lane.take(head.method, head.path, "", head.header)
        if head is None or taken is None:
            return self._through_gunicorn()
        body = self._read_body(head.consumed, taken.length)
        worker = self.worker
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            worker.log.info("Autorestarting worker after current request.")
            worker.alive = False
        status, headers, answer = worker.lane.answer(taken, head.path, body, head.header)
        close = head.close or not worker.alive or not self.cfg.keepalive
        self.client.sendall(_response(status, headers, answer, close))
        if close:
            return False
        gevent.sleep(0)  # the worker's other connections get their turn (an inline model call never waits)
        return True

    def _read_head(self) -> Plain | None:
        """Read until the buffer holds a whole head: a Plain when this path serves it, else None (the bytes stay
        in the buffer for gunicorn). A head that outgrows HEAD_LIMIT is gunicorn's too, and so is one with a bare
        LF line end, whose end this loop would not see."""
        while True:
            end = self.buffer.find(_SEPARATOR)
            head = self.buffer if end < 0 else self.buffer[: end + 4]
            if head.count(b"\n") != head.count(b"\r\n"):
                return None
            if end >= 0:
                return parse_head(head, self.limits)
            if len(self.buffer) > HEAD_LIMIT:
                return None
            self._receive(READ_SIZE)

    def _read_body(self, start: int, length: int) -> bytes:
        end = start + length
        if (missing := end - len(self.buffer)) > 0:
            self._receive(missing, exact=True)
        with memoryview(self.buffer) as view:
            body = view[start:end].tobytes()  # one copy; bytes() of a bytearray slice made two
        del self.buffer[:end]
        return body

    def _receive(self, size: int, exact: bool = False) -> None:
        """Append up to `size` bytes (`exact`: all of them) to the buffer; _Closed at the end of the stream."""
        if not exact:
            data = self.client.recv(size)
            if not data:
                raise _Closed
            self.buffer += data
            return
        chunk = bytearray(size)
        view, got = memoryview(chunk), 0
        while got < size:
            n = self.client.recv_into(view[got:])
            if not n:
                raise _Closed
            got += n
        self.buffer += chunk

    def _through_gunicorn(self) -> bool:
        """gunicorn serves the next request, from the bytes already read on; what it read beyond comes back."""
        worker = self.worker
        if self.parser is None:
            self.parser = ghttp.get_parser(self.cfg, self.client, self.addr)
            self.listener_name = self.listener.getsockname()
        parser = self.parser
        parser.unreader.unread(bytes(self.buffer))
        self.buffer.clear()
        self.client.settimeout(None)  # gunicorn's own handling expects a blocking socket
        req = None
        try:
            with worker.timeout_ctx():
                req = next(parser)
            if not req:
                return False
            worker.handle_request(self.listener_name, req, self.client, self.addr)
            if not parser.finish_body():
                return False
        except (StopIteration, ghttp.errors.NoMoreData):
            return False
        except OSError:
            raise
        except Exception as exc:
            worker.handle_error(req, self.client, self.addr, exc)
            return False
        if parser.mesg is not None and parser.mesg.should_close():
            return False
        parser.mesg = None
        self.buffer += parser.unreader.take_buffered()
        self.client.settimeout(self.timeout)
        return True


def _response(status: int, headers: list[tuple[str, str]], body: bytes, close: bool) -> bytes:
    head = [
        _status_line(status),
        b"Server: ",
        SERVER.encode("latin-1"),
        b"\r\nDate: ",
        _date.now(),
        b"\r\nConnection: close\r\n" if close else b"\r\nConnection: keep-alive\r\n",
    ]
    head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]
    head += [b"\r\n", body]
    return b"".join(head)
