"""Blocking native calls under either gunicorn worker class.

onnxruntime releases the GIL while it computes. Under gthread workers a plain call is right: the other request
threads keep running. Under gevent workers (one OS thread, many greenlets) a plain call would stall every
greenlet of the worker for its whole duration, so it goes to gevent's pool of real threads instead, and the
calling greenlet yields until it returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def offload(fn: Callable[..., T], *args: object) -> T:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)


class Occupancy:
    """How many client connections this gevent worker has open (`with occupancy:` around each), so that a short
    model call may run inline when nobody else could be waiting: its run holds a request of every connection
    (`alone`). Only seqserve's gevent worker (service/worker.py) keeps the count, and sets `tracking`; one OS
    thread runs all its greenlets, so a plain integer is exact. Anywhere else `alone` is False.

    Connections, not requests in progress: under load a worker's clients often have nothing in flight for a moment,
    and a run made inline then keeps the requests that arrive meanwhile from being read and merged into the next
    run. Counting requests in progress instead, a fifth of the runs at 32 connections (wrk, h128 1x50) went inline
    and throughput fell 9 %."""

    def __init__(self) -> None:
        self.count = 0
        self.tracking = False

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1

    def alone(self, requests: int) -> bool:
        """Whether a run of `requests` requests holds one of every open connection."""
        return self.tracking and self.count <= requests


occupancy = Occupancy()  # this worker process's; service/worker.py keeps it
