"""Blocking native calls under either gunicorn worker class.

onnxruntime releases the GIL while it computes. Under gthread workers a plain call is right: the other request
threads keep running. Under gevent workers (one OS thread, many greenlets) a plain call would stall every
greenlet of the worker for its whole duration, so it goes to a pool of real threads instead, and the calling
greenlet yields until it returns.

That pool is `NativePool`, not gevent's `ThreadPool`. gevent's costs about 120 us of CPU per call on this
project's development machine (a Python-level queue and condition, an async watcher made and started per call,
the pool resized on each spawn), as much as onnxruntime's whole run of a 1x50 request, and 76 us a call with 8
greenlets calling at once. `NativePool` hands a call over through a native lock, C-level queues and one async
watcher per hub: 89 us for a lone call (two OS thread wake-ups) and 20 us with 8 greenlets calling on that machine;
59-72 us and 8-12 us on today's, where gevent's takes 59-75 us and 33-37 us (`python -m bench.handoff`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

MAX_THREADS = 10  # as gevent's ThreadPool: calls beyond this many at once wait for a thread
Job = tuple[Callable[..., Any], tuple[object, ...], Any]  # a call and the Waiter of its greenlet
_NEW = object()  # NativePool._helper: start a thread


def offload(fn: Callable[..., T], *args: object) -> T:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return NativePool.of_this_hub().apply(fn, *args)
    return fn(*args)


class NativePool:
    """Real threads for the greenlets of one gevent hub (the worker's main thread).

    A call is put on the backlog, a deque under a native lock that the threads take too; the calling greenlet waits
    on a gevent `Waiter`. A thread puts the outcome on a C `SimpleQueue` and sends the hub's async watcher,
    thread-safe in libev and libuv; in the hub, the watcher's callback hands each outcome to its waiter. Only the
    hub's own thread calls `apply` and `_deliver`, so `busy` needs no lock; it keeps the watcher referenced while
    calls are out (the hub must not think it has nothing left to wait for). A greenlet killed or timed out while
    waiting leaves its call to finish; the outcome is then dropped (a `Waiter` whose greenlet left holds the value
    instead of switching).

    Which thread takes a call: one that just finished takes the next waiting call without sleeping; otherwise the
    thread that went idle last is woken (idle threads wait on their own C `SimpleQueue`, kept as a stack, as Go's
    scheduler keeps idle threads), or a new one starts while fewer than `max_threads` run. At most one thread is
    on its way to the backlog at a time (`_searching`); it sends for the next only if calls still wait once it has
    taken its own, so calls that arrive together wake threads one at a time, as many as the calls keep busy.

    Why the order: when every idle thread waited on one shared queue, calls took turns among them, and a worker
    whose pool had once grown to two threads (two models' runs at once) ran each call on the thread that another
    call had used last. `python -m bench.handoff --model`: a 64x50 h32 run cost 7-9 % more CPU on a pool of two or
    four threads than on one (1,515 against 1,386 us); now one thread serves calls made one at a time and the cost
    is the same. Whole servers that first served the same mix of cells back to back (`python -m bench.ab --warm`, the
    full benchmark's order, which grows the pool): h32 64x50 V2 binary at 8 clients went from 71.7 and 73.3 % of raw
    onnxruntime to 77.6 and 78.9 % (two seeds), its p99 from 13.7 to 10.1 ms."""

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
        self._inbox = _queue.SimpleQueue  # the C queues: gevent's monkey patching replaces queue.SimpleQueue
        self._done: Any = _queue.SimpleQueue()
        self._empty = _queue.Empty
        self._idle: list[Any] = []  # the inboxes of the threads waiting for a call, the last to go idle on top
        self._backlog: deque[Job] = deque()  # calls no thread has taken yet
        self._searching = 0  # threads sent for (woken or started) that have not taken a call yet
        self._lock = monkey.get_original("_thread", "allocate_lock")()  # a native lock: the threads take it too
        self._start_thread = monkey.get_original("_thread", "start_new_thread")
        self._watcher = hub.loop.async_(ref=False)
        self._watcher.start(self._deliver)

    def apply(self, fn: Callable[..., T], *args: object) -> T:
        waiter = self._waiter(self.hub)
        self.busy += 1
        if self.busy == 1:
            self._watcher.ref = True
        try:
            with self._lock:
                self._backlog.append((fn, args, waiter))
                helper = self._helper()
            if helper is not None:
                self._send(helper)
            ok, value = waiter.get()
        finally:
            self.busy -= 1
            if not self.busy:
                self._watcher.ref = False
        if ok:
            return value
        raise value

    def _helper(self) -> Any:
        """(lock held) Who takes the waiting calls: None when none wait or a thread is already on its way to them,
        else the idle thread that went idle last, else a new thread (`_NEW`) while there is room for one."""
        if not self._backlog or self._searching:
            return None
        if self._idle:
            helper = self._idle.pop()
        elif self.threads < self.max_threads:
            helper, self.threads = _NEW, self.threads + 1
        else:
            return None  # every thread is busy: the first to finish takes the next call
        self._searching += 1
        return helper

    def _send(self, helper: Any) -> None:
        """Wake the idle thread, or start the new one: RuntimeError when the process can start no thread, and the
        waiting calls are then left to the threads that run."""
        if helper is not _NEW:
            helper.put(None)
            return
        try:
            self._start_thread(self._work, ())
        except RuntimeError:
            with self._lock:
                self._searching -= 1
                self.threads -= 1
            raise

    def _work(self) -> None:
        """Take calls until none wait, then wait to be sent for. A thread sent for takes one call and, if more wait,
        sends for another thread before it runs its own. A thread that finishes a call takes the next waiting one,
        or goes idle, before it delivers the outcome: by the time the caller runs again (and, say, the batcher
        hands its next run over), this thread is idle or busy, never between, and no thread starts for nothing."""
        inbox = self._inbox()
        give, wake, lock, idle, backlog = self._done.put, self._watcher.send, self._lock, self._idle, self._backlog
        sent_for, finished = True, None  # a thread starts sent for (counted in `_searching`), with nothing to deliver
        while True:
            with lock:
                if sent_for:
                    self._searching -= 1
                job = backlog.popleft() if backlog else None
                helper = self._helper() if backlog else None
                if job is None:
                    idle.append(inbox)
            if finished is not None:
                give(finished)
                finished = None  # nothing of a finished call stays alive while the thread waits
                wake()
            if helper is not None:
                with contextlib.suppress(RuntimeError):  # this thread takes the next call itself
                    self._send(helper)
            if job is None:
                inbox.get()
                sent_for = True
                continue
            fn, args, waiter = job
            try:
                finished = (waiter, (True, fn(*args)))
            except BaseException as exc:  # raised again in the calling greenlet
                finished = (waiter, (False, exc))
            del fn, args, waiter, job
            sent_for = False

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
