"""Request ids, structured (JSON lines) logs and per-request metrics.

Logs are written by one background thread per app (`LogPipeline`): request threads only put records on a queue;
the writer takes everything queued at once, formats it and writes it to the stream in one call. The pipeline is
owned by the app and stopped (and flushed) with it; a newer pipeline takes over the root logger from an older one.
"""

from __future__ import annotations

import atexit
import logging
import queue
import re
import sys
import threading
import time
import uuid
from typing import TextIO

import orjson
from flask import Flask, Response, g, request

from service.metrics import Metrics

REQUEST_ID = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET = {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
access_log = logging.getLogger("seqserve.access")


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


class _Enqueue(logging.Handler):
    """The root logger's handler: hands records over as they are (formatting happens in the writer thread)."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)


class LogPipeline:
    def __init__(self, level: str, stream: TextIO | None = None) -> None:
        self.level = level.upper()
        self.stream = stream or sys.stderr
        self.formatter = JsonFormatter()
        self._records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._handler = _Enqueue(self._records)
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)

    def start(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, _Enqueue):  # an older app's pipeline: this one takes over
                root.removeHandler(handler)
        root.addHandler(self._handler)
        root.setLevel(self.level)
        self._thread.start()
        atexit.register(self.stop)  # a worker that exits without closing its app still flushes

    def stop(self) -> None:
        """Detach from the root logger, then write what is still queued."""
        atexit.unregister(self.stop)
        logging.getLogger().removeHandler(self._handler)
        if self._thread.is_alive():
            self._records.put(None)
            self._thread.join(timeout=5)

    def _write(self) -> None:
        while True:
            batch = [self._records.get()]
            while True:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            lines = [self._line(r) for r in batch if r is not None]
            if lines:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except (OSError, ValueError):  # a closed stream: nothing left to tell
                    return
            if done:
                return

    def _line(self, record: logging.LogRecord) -> str:
        try:
            return self.formatter.format(record) + "\n"
        except Exception:  # a record that cannot be formatted must not stop the writer
            return f'{{"level": "ERROR", "msg": "unformattable log record from {record.name}"}}\n'


def init_app(app: Flask, metrics: Metrics, log_requests: bool) -> None:
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
        metrics.requests.labels(endpoint, model, str(response.status_code)).inc()
        metrics.request_seconds.labels(endpoint, model).observe(elapsed)
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
