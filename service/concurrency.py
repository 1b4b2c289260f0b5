"""Blocking native calls under either gunicorn worker class.

onnxruntime releases the GIL while it computes. Under gthread workers a plain call is right: the other request
threads keep running. Under gevent workers (one OS thread, many greenlets) a plain call would stall every
greenlet of the worker for its whole duration, so it goes to a pool of real threads instead, and the calling
greenlet yields until it returns.

That pool is `NativePool`, not gevent's `ThreadPool`. gevent's costs about 120 us of CPU per call on this
project's development machine (a Python-level queue and condition, an async watcher made and started per call,
the pool resized on each spawn), as much as onnxruntime's whole run of a 1x50 request, and 76 us a call with 8
greenlets calling at once. `NativePool` hands a call over through C-level queues and one async watcher per hub:
89 us for a lone call (two OS thread wake-ups) and 20 us with 8 greenlets calling (`python -m bench.handoff`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

MAX_THREADS = 10  # as gevent's ThreadPool: calls beyond this many at once wait for a thread


def offload(fn: Callable[..., T], *args: object) -> T:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return NativePool.of_this_hub().apply(fn, *args)
    return fn(*args)


class NativePool:
    """Real threads for the greenlets of one gevent hub (the worker's main thread).

    A call goes to the threads through a C `SimpleQueue` (its `get` blocks on a native lock, without the GIL);
    the calling greenlet waits on a gevent `Waiter`. A thread puts the outcome on a second queue and sends the
    hub's async watcher, thread-safe in libev and libuv; in the hub, the watcher's callback hands each outcome to
    its waiter. Only the hub's own thread calls `apply` and `_deliver`, so `busy` needs no lock; it keeps the
    watcher referenced while calls are out (the hub must not think it has nothing left to wait for) and says when
    another thread is needed. A greenlet killed or timed out while waiting leaves its call to finish; the outcome
    is then dropped (a `Waiter` whose greenlet left holds the value instead of switching)."""

    _pools: ClassVar[dict[int, NativePool]] = {}  # by hub; a forked child starts without (its threads stayed behind)

    @classmethod
    def of_this_hub(cls) -> NativePool:
        from gevent import get_hub

        hub = get_hub()
        pool = cls._pools.get(id(hub))
        if pool is None or pool.hub is not hub:
            pool = cls._pools[id(hub)] = cls(hub)
        return pool

    def __init__(self, hub: Any, max_threads: int = MAX_THREADS) -> None:
        import _queue

        from gevent import monkey
        from gevent.hub import Waiter

        self.hub = hub
        self._waiter = Waiter
        self.max_threads = max_threads
        self.threads = 0
        self.busy = 0
        self._jobs: Any = _queue.SimpleQueue()  # the C queues: gevent's monkey patching replaces queue.SimpleQueue
        self._done: Any = _queue.SimpleQueue()
        self._empty = _queue.Empty
        self._start_thread = monkey.get_original("_thread", "start_new_thread")
        self._watcher = hub.loop.async_(ref=False)
        self._watcher.start(self._deliver)

    def apply(self, fn: Callable[..., T], *args: object) -> T:
        waiter = self._waiter(self.hub)
        self.busy += 1
        if self.busy == 1:
            self._watcher.ref = True
        try:
            if self.busy > self.threads and self.threads < self.max_threads:
                self._start_thread(self._work, ())
                self.threads += 1
            self._jobs.put((fn, args, waiter))
            ok, value = waiter.get()
        finally:
            self.busy -= 1
            if not self.busy:
                self._watcher.ref = False
        if ok:
            return value
        raise value

    def _work(self) -> None:
        take, give, wake = self._jobs.get, self._done.put, self._watcher.send
        while True:
            fn, args, waiter = take()
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # raised again in the calling greenlet
                outcome = (False, exc)
            give((waiter, outcome))
            del fn, args, waiter, outcome  # nothing of a finished call stays alive while the thread waits
            wake()

    def _deliver(self) -> None:
        take = self._done.get_nowait
        while True:
            try:
                waiter, outcome = take()
            except self._empty:
                return
            waiter.switch(outcome)


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
os.register_at_fork(after_in_child=NativePool._pools.clear)
