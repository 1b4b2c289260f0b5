"""Loopback traffic that records every outcome, for the reliability scenarios (tests/reliability, bench/soak.py).

`Traffic` runs client threads, each with its own keep-alive `http.client` connection, that send requests until a
count (`limit`, over all clients) or a deadline (`duration`) is reached or `stop()` is called, whichever comes
first: it always stops by itself. Closed loop by default (each client sends its next request when the last one is
answered); with `rate` each client keeps its own schedule of `rate / clients` requests per second (open loop until
the clients are all busy). Every request is an `Outcome`: the HTTP status, or `None` and the exception when no
answer came (refused, reset, timed out); its latency, `Retry-After`, the `X-Request-ID` sent, and the body when
asked for. A connection that failed or was told `Connection: close` is replaced before the next request.
Only 127.0.0.1 is allowed: these are loads, and they must not leave the machine.
"""

from __future__ import annotations

import http.client
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
BACKOFF = 0.05  # seconds a client waits after a request that got no answer
CLOSE = {"Connection": "close"}  # keepalive=False: a new connection, so a new accept(), for every request


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic() when sent
    seconds: float
    status: int | None  # None: no HTTP answer (see error)
    request_id: str
    error: str = ""
    retry_after: str | None = None
    body: bytes = b""  # only with keep_bodies


class Traffic:
    def __init__(
        self,
        url: str,
        request: Request | Callable[[int], Request],
        *,
        clients: int = 4,
        limit: int = 1_000_000,
        duration: float = 60.0,
        rate: float | None = None,
        timeout: float = 30.0,
        keep_bodies: bool = False,
        keepalive: bool = True,
        prefix: str = "t",
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname != LOOPBACK:
            raise ValueError(f"{url}: reliability traffic goes to {LOOPBACK} only")
        self.host, self.port = parts.hostname, parts.port or 80
        self.request = request if callable(request) else (lambda i, r=request: r)
        self.clients, self.limit, self.duration, self.rate = clients, limit, duration, rate
        self.timeout, self.keep_bodies, self.keepalive, self.prefix = timeout, keep_bodies, keepalive, prefix
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]

    def start(self) -> Traffic:
        self._deadline = time.monotonic() + self.duration
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        return self.join()

    def join(self) -> list[Outcome]:
        for thread in self._threads:
            thread.join(self.duration + self.timeout + 5)
        return self.outcomes

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, done: int, timeout: float = 60.0) -> None:
        """Until `done` requests are answered (or failed), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.count() < done and time.monotonic() < deadline and any(t.is_alive() for t in self._threads):
            time.sleep(0.01)

    def _client(self, client: int) -> None:
        connection: http.client.HTTPConnection | None = None
        interval = self.clients / self.rate if self.rate else 0.0
        due = self._started + client * interval / self.clients
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            if interval:
                due += interval
                if (pause := due - time.monotonic()) > 0 and self._stop.wait(pause):
                    break
            number = next(self._numbers)
            if number >= self.limit:
                break
            connection = connection or http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            outcome, keep = self._send(connection, number)
            if not keep:
                connection.close()
                connection = None
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.status is None:
                self._stop.wait(BACKOFF)  # a server that refuses connections is not hammered in a tight loop
        if connection is not None:
            connection.close()

    def _send(self, connection: http.client.HTTPConnection, number: int) -> tuple[Outcome, bool]:
        request = self.request(number)
        request_id = f"{self.prefix}-{number}"
        started = time.monotonic()
        try:
            connection.request(
                request.method,
                request.path,
                body=request.body,
                headers={**request.headers, "X-Request-ID": request_id, **({} if self.keepalive else CLOSE)},
            )
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(started, time.monotonic() - started, None, request_id, f"{type(exc).__name__}: {exc}"), False
        outcome = Outcome(
            started,
            time.monotonic() - started,
            response.status,
            request_id,
            retry_after=response.getheader("Retry-After"),
            body=body if self.keep_bodies else b"",
        )
        return outcome, not response.will_close


@contextmanager
def running(traffic: Traffic) -> Iterator[Traffic]:
    """Traffic for the duration of a block; stopped (and joined) when it ends, however it ends."""
    traffic.start()
    try:
        yield traffic
    finally:
        traffic.stop()


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of `values`, inclusive method; nan for fewer than two."""
    if len(values) < 2:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


def statuses(outcomes: list[Outcome]) -> dict[str, int]:
    """How many of each status ('refused'/'reset'... as the exception's name when no answer came)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else o.error.split(":", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
