"""Request ids, structured (JSON lines) logs and per-request metrics.

Logs are written by one background thread per app (`LogPipeline`): request threads only put records on a queue;
the writer takes everything queued at once, formats it and writes it to the stream in one call. The pipeline is
owned by the app and stopped (and flushed) with it. The root logger is the process's: the newest running app's
pipeline writes for it, and when that app closes, the next newest takes over again.

The access log skips the `logging` machinery (a LogRecord with extras costs more than the rest of the line): a
request appends one small entry to a list, and the writer, every 0.2 s, turns all of them into the same JSON lines a
record would have made, in one write.
Access lines are on by default (`SEQSERVE_LOG_REQUESTS`, as uvicorn's; gunicorn's are off, ours replace them);
server errors (5xx) are logged whatever that setting says.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

import orjson
from flask import Flask, Response, g, request

from service.metrics import Metrics

REQUEST_ID = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET = {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
ACCESS_LOGGER = "seqserve.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra=` fields (request_id, status...)."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


@dataclass(frozen=True, slots=True)
class Access:
    """One request, as the access log tells it."""

    time: float
    method: str
    path: str
    status: int
    model: str | None
    duration_ms: float
    request_id: str | None

    def line(self) -> bytes:
        seconds = int(self.time)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((self.time - seconds) * 1000):03d}Z"
        return orjson.dumps(
            {
                "ts": stamp,
                "level": "ERROR" if self.status >= 500 else "INFO",
                "logger": ACCESS_LOGGER,
                "msg": f"{self.method} {self.path} {self.status}",
                "request_id": self.request_id,
                "status": self.status,
                "model": self.model,
                "duration_ms": round(self.duration_ms, 3),
                "method": self.method,
                "path": self.path,
            }
        )


Entry = logging.LogRecord | object | None  # None: the writer stops; _FLUSH: write the access lines now
_FLUSH = object()
ACCESS_BATCH = 256  # access lines kept before the writer is woken early
ACCESS_FLUSH_SECONDS = 0.2  # otherwise the writer writes them this often


class _Enqueue(logging.Handler):
    """The root logger's handler: hands records over as they are (formatting happens in the writer thread)."""

    def __init__(self, records: queue.SimpleQueue[Entry]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)


class LogPipeline:
    def __init__(self, level: str, stream: TextIO | None = None) -> None:
        self.level = level.upper()
        self.stream = stream or sys.stderr
        self.formatter = JsonFormatter()
        self._records: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self._handler = _Enqueue(self._records)
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._accesses: list[Access] = []  # access lines not written yet
        self._access_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()
        _running.append(self)
        _attach(self)
        atexit.register(self.stop)  # a worker that exits without closing its app still flushes

    def access(self, entry: Access) -> None:
        """Keep the line; the writer takes every kept line at once, every ACCESS_FLUSH_SECONDS (or sooner when
        ACCESS_BATCH lines wait). A queue hand-off per request woke the writer once per request, which cost more
        than the line itself."""
        with self._access_lock:
            self._accesses.append(entry)
            full = len(self._accesses) >= ACCESS_BATCH
        if full:
            self._records.put(_FLUSH)

    def stop(self) -> None:
        """Hand the root logger back to the newest pipeline still running, then write what is still queued."""
        atexit.unregister(self.stop)
        if self in _running:
            _running.remove(self)
        logging.getLogger().removeHandler(self._handler)
        if _running:
            _attach(_running[-1])
        if self._thread.is_alive():
            self._records.put(None)
            self._thread.join(timeout=5)

    def _write(self) -> None:
        while True:
            try:
                batch = [self._records.get(timeout=ACCESS_FLUSH_SECONDS)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            with self._access_lock:
                accesses, self._accesses = self._accesses, []
            lines = [self._line(r) for r in batch if r is not None and r is not _FLUSH]
            lines += [a.line() + b"\n" for a in accesses]
            if lines:
                try:
                    self.stream.write(b"".join(lines).decode())
                    self.stream.flush()
                except (OSError, ValueError):  # a closed stream: nothing left to tell
                    return
            if done:
                return

    def _line(self, entry: logging.LogRecord) -> bytes:
        try:
            return self.formatter.format(entry).encode() + b"\n"
        except Exception:  # a record that cannot be formatted must not stop the writer
            return b'{"level": "ERROR", "msg": "unformattable log record"}\n'


_running: list[LogPipeline] = []  # pipelines of the apps alive in this process, oldest first


def _attach(pipeline: LogPipeline) -> None:
    """The root logger writes through `pipeline` (the newest app's) alone, at its level."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Enqueue):
            root.removeHandler(handler)
    root.addHandler(pipeline._handler)
    root.setLevel(pipeline.level)


class _RequestIds:
    """New request ids: 32 hex digits as `uuid4().hex`, from a random prefix per process and a counter, so that a
    request costs no `os.urandom` call (uuid4 makes one each time). Forked children draw their own prefix."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix, self.counter = secrets.token_hex(8), itertools.count()

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_ids = _RequestIds()


def request_id(given: str | None) -> str:
    """The client's `X-Request-ID` when it is a sensible token, else a new one."""
    return given if given and _VALID_ID.match(given) else _ids.new()


class RequestRecorder:
    """What every answered request leaves behind, whichever door it came in by (the Flask hooks below, or the
    inference lane, `service/lane.py`): its count and latency, and its access line."""

    def __init__(self, metrics: Metrics, logs: LogPipeline, log_requests: bool) -> None:
        self.metrics, self.logs, self.log_requests = metrics, logs, log_requests
        self.debug = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.DEBUG)

    def record(
        self, method: str, path: str, rule: str, model: str, status: int, elapsed: float, request_id: str | None
    ) -> None:
        metrics = self.metrics
        metrics.inc(metrics.requests, (rule, model, str(status)))
        metrics.observe(metrics.request_seconds, (rule, model), elapsed)
        quiet = path in _QUIET and status < 400 and not self.debug  # probes and scrapes: DEBUG
        if (self.log_requests and not quiet) or status >= 500:
            self.logs.access(Access(time.time(), method, path, status, model or None, elapsed * 1000, request_id))


def init_app(app: Flask, recorder: RequestRecorder) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id(request.headers.get(REQUEST_ID))

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        rid = g.get("request_id")
        response.headers[REQUEST_ID] = rid or ""
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        recorder.record(request.method, request.path, rule, g.get("model_name", ""), response.status_code, elapsed, rid)
        return response
