"""Request ids, structured (JSON lines) logs and per-request metrics."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import time
import uuid

import orjson
from flask import Flask, Response, g, request

from service import metrics

REQUEST_ID = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET = {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
access_log = logging.getLogger("seqserve.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra=` fields (request_id, status...)."""

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


class _Handoff(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting and the write happen there, so request threads
    never queue behind each other on the stream's lock."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str) -> None:
    """JSON lines on stderr, written by one background thread (stopped and flushed at exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Handoff):
            root.removeHandler(handler)
    formatter = JsonFormatter()
    formatter.converter = time.gmtime
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    atexit.register(_listener.stop)
    root.addHandler(_Handoff(records))
    root.setLevel(level.upper())


def init_app(app: Flask, log_requests: bool) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        given = request.headers.get(REQUEST_ID, "")
        g.request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        response.headers[REQUEST_ID] = g.get("request_id", "")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        model = g.get("model_name", "")
        metrics.REQUESTS.labels(endpoint, model, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(endpoint, model).observe(elapsed)
        if log_requests:
            level = logging.DEBUG if request.path in _QUIET and response.status_code < 400 else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "%s %s %d",
                    request.method,
                    request.path,
                    response.status_code,
                    extra={
                        "request_id": g.get("request_id"),
                        "status": response.status_code,
                        "model": model or None,
                        "duration_ms": round(elapsed * 1000, 3),
                        "method": request.method,
                        "path": request.path,
                    },
                )
        return response
