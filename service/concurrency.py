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


def yield_now() -> None:
    """Let the worker's other greenlets run (gevent): a greenlet that never blocks would keep its connection's
    requests going back to back while the others wait (their latency then grows without bound)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        gevent.sleep(0)
