"""Adaptive batching across requests, per model version and worker (Triton's dynamic batcher, MLServer's adaptive
batching), with variable-length sequences merged into one padded run.

No fixed window and no batching thread: a request that finds the model free runs at once, in its own thread, so
an idle model pays nothing for batching. Requests that arrive while it is busy queue up. When a run ends, its
thread hands the model to the oldest queued request (leader/follower), whose thread merges what has queued into
the next run: the oldest request picks a length bucket (powers of two of its longest sequence) and queued requests
of the same bucket join it, up to `max_sequences` sequences, `max_cells` padded timesteps and `max_run` seconds of
expected compute. A request is never split.

With `max_queue_delay` > 0 a run that is not full waits that long, from its oldest request's arrival, for company.
The queue is bounded: when full, `submit` raises `Overloaded` at once.

The run-time bound is learnt per length bucket from the runs themselves (the fastest run's seconds per padded cell),
because counts cannot tell a cheap model from a dear one. A/B with `python -m bench.ab`, 64x50 requests at 8
clients, 256 sequences against 64: letting up to four h32 requests (1.1 ms each) share a run raised req/s by 10-14 %;
letting h128 requests (11 ms each) share one cost 13 % more CPU per request. With a 5 ms bound, each gets its own.

A batcher belongs to one model version, so a run never mixes versions. When its version is unloaded, `drain` waits
until nothing is queued or running; it refuses nothing, because a request that looked the version up just before
it was unloaded must still be answered by it. `stop` (the worker shutting down) refuses new requests.

Merging pads features along time and concatenates every tensor along its batch axis; the outputs are cut back per
request (batch rows, and time up to that request's own longest sequence), so a request gets exactly the arrays an
unbatched run of it would give.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from modelrepo.manifest import Manifest
from service.errors import NotReady, Overloaded, Timeout

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


@dataclass
class BatchObserver:
    """Where the batcher reports what it did (the dataplane wires these to Prometheus)."""

    queue_seconds: Callable[[float], None] = lambda s: None
    compute_seconds: Callable[[float], None] = lambda s: None
    batch_sequences: Callable[[int, bool], None] = lambda n, stateful: None  # stateful: the run carried a state
    rejected: Callable[[], None] = lambda: None


@dataclass(eq=False)  # identity semantics: the queue removes this very request, never compares arrays
class _Work:
    inputs: Arrays
    sequences: int
    steps: int
    bucket: tuple[int, frozenset[str]]  # only requests with the same length bucket and input names merge
    enqueued: float = field(default_factory=time.perf_counter)
    signal: threading.Event | None = None  # a follower's: finished, or promoted to leader (a leader waits for nothing)
    finished: bool = False
    promoted: bool = False
    outputs: Arrays | None = None
    error: BaseException | None = None


def bucket_of(steps: int) -> int:
    return max(0, int(steps - 1).bit_length())


class AdaptiveBatcher:
    def __init__(
        self,
        run: Callable[[Arrays, int], Arrays],  # the merged inputs and how many requests they hold
        manifest: Manifest,
        *,
        max_sequences: int,
        max_cells: int,
        max_queue: int,
        max_queue_delay: float = 0.0,
        max_run: float = 0.0,  # seconds of expected compute a merged run may grow to (0: no bound)
        timeout: float = 30.0,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self._inputs = {t.name: t for t in manifest.inputs}
        self._outputs = {t.name: t for t in manifest.outputs}
        self._stateful = manifest.state_inputs[0].name if manifest.state_inputs else None
        self.max_sequences, self.max_cells, self.max_queue = max_sequences, max_cells, max_queue
        self.max_queue_delay, self.max_run, self.timeout = max_queue_delay, max_run, timeout
        self._cell_seconds: dict[tuple[int, frozenset[str]], float] = {}  # per bucket: the fastest run, per cell
        self.observer = observer or BatchObserver()
        self._queue: deque[_Work] = deque()
        self._cond = threading.Condition(threading.Lock())  # never re-entered: a plain lock costs less than an RLock
        self._busy = False  # a leader is running (or about to run) the model
        self._stopped = False

    def submit(self, inputs: Arrays) -> Arrays:
        features = inputs["features"]
        bucket = (bucket_of(features.shape[1]), frozenset(inputs))
        work = _Work(inputs, features.shape[0], features.shape[1], bucket)
        with self._cond:
            if self._stopped:
                raise NotReady("model version is being unloaded")
            self._refuse_when_full()
            self._queue.append(work)
            lead, self._busy = not self._busy, True
            if not lead:
                work.signal = threading.Event()
            if self.max_queue_delay > 0:
                self._cond.notify_all()  # a leader may be waiting for company
        if lead or self._follow(work):
            self._lead()
        if work.error is not None:
            raise work.error
        assert work.outputs is not None
        return work.outputs

    def admit(self) -> None:
        """Refuse at once (Overloaded) when the queue is full: lets a view refuse before it decodes a body."""
        with self._cond:
            self._refuse_when_full()

    def _refuse_when_full(self) -> None:
        if len(self._queue) >= self.max_queue:
            self.observer.rejected()
            raise Overloaded(f"model queue is full ({self.max_queue} requests waiting); retry shortly")

    @property
    def queued(self) -> int:
        """Requests waiting for a run (a leader waiting for company counts its own)."""
        with self._cond:
            return len(self._queue)

    def stop(self) -> None:
        """Refuse new requests; those already queued still run."""
        with self._cond:
            self._stopped = True

    @property
    def busy(self) -> bool:
        """A run is in progress or requests are queued."""
        with self._cond:
            return self._busy or bool(self._queue)

    def drain(self, timeout: float) -> bool:
        """Wait until no request is queued or running (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # -------------------------------------------------------------------------------------- leader/follower

    def _follow(self, work: _Work) -> bool:
        """Wait until a leader has run this request (False) or hands the model to it (True)."""
        signal = work.signal
        assert signal is not None  # set when it was queued behind a busy model
        if not signal.wait(self.timeout):
            with self._cond:
                if not signal.is_set() and any(w is work for w in self._queue):
                    self._queue.remove(work)
                    raise Timeout(f"inference did not start within {self.timeout:g} s")
            signal.wait()  # already running: its result is moments away
        return work.promoted and not work.finished

    def _lead(self) -> None:
        """Run one merged batch (it always holds the oldest request, this thread's own), then hand over."""
        with self._cond:
            if self.max_queue_delay > 0:
                self._wait_for_company()
            group = self._take()
        try:
            self._execute(group)
        finally:
            with self._cond:
                if self._queue:
                    head = self._queue[0]
                    head.promoted = True
                    assert head.signal is not None  # queued behind this run: a follower
                    head.signal.set()
                else:
                    self._busy = False
                    self._cond.notify_all()  # a drain may be waiting for the model to go idle

    def _wait_for_company(self) -> None:
        head = self._queue[0]
        deadline = head.enqueued + self.max_queue_delay
        while not self._full(head) and (wait := deadline - time.perf_counter()) > 0:
            self._cond.wait(wait)

    def _take(self) -> list[_Work]:
        """The oldest request and the queued requests of its length bucket that fit (lock held). Whole queue
        scan, removal by rebuilding: the queue is short (bounded by max_queue)."""
        head = self._queue[0]
        group, rest, sequences, longest = [], deque(), 0, 0
        most_cells = self._most_cells(head.bucket)
        for work in self._queue:
            new_longest = max(longest, work.steps)
            fits = not group or (
                work.bucket == head.bucket
                and sequences + work.sequences <= self.max_sequences
                and (sequences + work.sequences) * new_longest <= most_cells
            )
            if fits:
                group.append(work)
                sequences, longest = sequences + work.sequences, new_longest
            else:
                rest.append(work)
        self._queue = rest
        return group

    def _most_cells(self, bucket: tuple[int, frozenset[str]]) -> int:
        """How many padded cells a run of this bucket may hold: `max_cells`, fewer when this bucket's fastest run so
        far says that many would take longer than `max_run` (no bound until one has run). The fastest, not an
        average: under a flood of requests a run's wall time grows with the wait for a core, and a bound that
        shrank with it would stop merging when merging matters most."""
        fastest = self._cell_seconds.get(bucket)
        if not self.max_run or not fastest:
            return self.max_cells
        return min(self.max_cells, int(self.max_run / fastest))

    def _learn(self, bucket: tuple[int, frozenset[str]], seconds: float, cells: int) -> None:
        """Only the leader of the moment calls this: one writer per batcher."""
        self._cell_seconds[bucket] = min(seconds / max(cells, 1), self._cell_seconds.get(bucket, float("inf")))

    def _full(self, head: _Work) -> bool:
        """No further sequence could join the run: the queued requests of its bucket reach a bound."""
        same = [w for w in self._queue if w.bucket == head.bucket]
        sequences, longest = sum(w.sequences for w in same), max(w.steps for w in same)
        return sequences >= self.max_sequences or (sequences + 1) * longest > self._most_cells(head.bucket)

    def _execute(self, group: list[_Work]) -> None:
        started = time.perf_counter()
        for work in group:
            self.observer.queue_seconds(started - work.enqueued)
        try:
            merged = group[0].inputs if len(group) == 1 else self._merge(group)
            outputs = self._run(merged, len(group))
            seconds, sequences = time.perf_counter() - started, sum(w.sequences for w in group)
            self._learn(group[0].bucket, seconds, sequences * max(w.steps for w in group))
            self.observer.compute_seconds(seconds)
            self.observer.batch_sequences(sequences, self._stateful in group[0].bucket[1])
            if len(group) == 1:
                group[0].outputs = outputs
            else:
                self._split(group, outputs)
        except Exception as exc:  # every request of the run hears about it
            log.exception("batched inference failed")
            for work in group:
                work.error = exc
        for work in group:
            work.finished = True
            if work.signal is not None:
                work.signal.set()

    def _merge(self, group: list[_Work]) -> Arrays:
        merged: Arrays = {}
        longest = max(w.steps for w in group)
        for name in group[0].inputs:
            spec = self._inputs[name]
            parts = [w.inputs[name] for w in group]
            if spec.time_axis is not None:
                parts = [_pad_time(p, spec.time_axis, longest) for p in parts]
            merged[name] = np.concatenate(parts, axis=spec.batch_axis)
        return merged

    def _split(self, group: list[_Work], outputs: Arrays) -> None:
        start = 0
        for work in group:
            rows = slice(start, start + work.sequences)
            start += work.sequences
            own: Arrays = {}
            for name, array in outputs.items():
                spec = self._outputs[name]
                index: list[slice] = [slice(None)] * array.ndim
                index[spec.batch_axis] = rows
                if spec.time_axis is not None:
                    index[spec.time_axis] = slice(0, work.steps)
                own[name] = array[tuple(index)]
            work.outputs = own


def _pad_time(array: np.ndarray, axis: int, length: int) -> np.ndarray:
    missing = length - array.shape[axis]
    if missing == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, missing)
    return np.pad(array, widths)
