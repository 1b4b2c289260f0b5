"""The stream load generator's driver: a pool of client processes (to get past the GIL; bench/stream_client.py runs
in each) kept for the whole streaming part, and the server's CPU sampled while they run.

`StreamPool.run` splits the streams of one load round-robin over the processes, waits until every stream has
connected and sent its uncounted first request, then gives them all one start and end time (in shared memory;
time.monotonic() is one clock for every process on Linux). It reads the server's CPU time (user + system of its
process group, from /proc) at the start, at the end and, for age runs, every `sample_every` seconds between. An
age run also ends early, by a flag in shared memory, once every stream has reached its target step. The result
keeps every request, so that a window of time (or of stream age) gives its own requests/s, latency percentiles
and CPU per request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

from bench import stream_client
from bench.loadgen import LoadResult, summarize
from bench.stream_client import Job, Outcome, Shared

log = logging.getLogger("bench.streams")

READY_TIMEOUT_S = 120.0  # a load process imports numpy and orjson: slow on a loaded machine
PRIME_TIMEOUT_S = 30.0  # for every stream to connect and send its first request
START_GAP_S = 0.02  # from the last first request to the common start
POLL_S = 0.05  # how often an age run looks whether every stream reached its target
Cpu = Callable[[], float | None]


@dataclass
class StreamRun:
    """Every answered request of one load (all processes), and the server's CPU seconds sampled over time."""

    done_at: np.ndarray
    latency: np.ndarray  # seconds
    stream: np.ndarray
    step: np.ndarray  # the stream's age (timesteps) after the request
    errors: int
    first_errors: list[str]
    samples: list[tuple[float, float]]  # (time.monotonic(), server CPU seconds); empty when not measurable
    start_at: float
    end_at: float
    client_cpu_s: float = 0.0  # the load processes' own CPU time

    @property
    def client_cpu_us_per_request(self) -> float:
        return self.client_cpu_s / len(self.done_at) * 1e6 if len(self.done_at) else float("nan")

    @classmethod
    def merge(cls, outcomes: list[Outcome], samples: list[tuple[float, float]], start: float, end: float):
        def cat(name: str, dtype: str) -> np.ndarray:
            return np.concatenate([np.frombuffer(getattr(o, name), dtype=dtype) for o in outcomes])

        return cls(
            cat("done_at", "d"),
            cat("latency", "d"),
            cat("stream", "i"),
            cat("step", "q"),
            sum(o.errors for o in outcomes),
            [e for o in outcomes for e in o.first_errors][: stream_client.KEPT_ERRORS],
            samples,
            start,
            end,
            sum(o.client_cpu_s for o in outcomes),
        )

    def cpu_between(self, t0: float, t1: float) -> float | None:
        if len(self.samples) < 2:
            return None
        times, cpu = np.asarray(self.samples).T
        return float(np.interp(t1, times, cpu) - np.interp(t0, times, cpu))

    def result(self, t0: float | None = None, t1: float | None = None) -> LoadResult:
        """Requests answered in [t0, t1] (default: the whole load), with the server CPU of that time."""
        t0, t1 = self.start_at if t0 is None else t0, self.end_at if t1 is None else t1
        inside = (self.done_at >= t0) & (self.done_at <= t1)
        errors = self.errors if (t0, t1) == (self.start_at, self.end_at) else 0
        result = summarize(list(self.latency[inside]), errors, t1 - t0)
        return dataclasses.replace(result, cpu_s=self.cpu_between(t0, t1))

    def reach_times(self, step: int) -> np.ndarray:
        """Per stream, when it answered its first request at or beyond `step` (inf: it never got there)."""
        return np.asarray(
            [
                self.done_at[mask].min() if (mask := (self.stream == s) & (self.step >= step)).any() else np.inf
                for s in np.unique(self.stream)
            ]
        )

    def median_step(self, t0: float, t1: float) -> float:
        inside = (self.done_at >= t0) & (self.done_at <= t1)
        return float(np.median(self.step[inside])) if inside.any() else float("nan")

    def slowest(self) -> int:
        """The age every stream reached."""
        return int(min(self.step[self.stream == s].max() for s in np.unique(self.stream))) if self.step.size else 0


class ProcessGroupCpu:
    """User + system CPU seconds of every process in some process groups (a server and its workers; redis-server),
    cheap enough to read every few milliseconds: the group members are found in /proc once, then only their own
    stat files are read, and /proc is scanned again only when one of them has gone."""

    def __init__(self, pgids: list[int]) -> None:
        self.pgids = set(pgids)
        self.pids: list[int] = []
        self.tick = os.sysconf("SC_CLK_TCK")

    def __call__(self) -> float | None:
        for _ in range(2):
            ticks = [_ticks(pid) for pid in self.pids]
            if self.pids and None not in ticks:
                return sum(t for t in ticks if t is not None) / self.tick
            self.pids = [pid for pid in _all_pids() if _pgid(pid) in self.pgids]
        return None


def _stat(pid: int) -> list[str] | None:
    try:  # the fields after the command: state ppid pgrp ... utime(11) stime(12)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone meanwhile
        return None


def _ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else None


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if fields else None


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


class StreamPool:
    """`processes` spawned load processes (spawn, not fork: the parent holds onnxruntime sessions and threads),
    ready once each has imported its modules."""

    def __init__(self, processes: int, ready_timeout: float = READY_TIMEOUT_S) -> None:
        context = multiprocessing.get_context("spawn")
        self.shared = Shared.create(context, processes)
        self.broken = ""  # why the pool cannot run loads any more
        self.pipes: list[Pipe] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for slot in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=stream_client.worker, args=(child, self.shared, slot), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            said = _receive(pipe) if pipe.poll(ready_timeout) else f"no answer in {ready_timeout:g} s"
            if said != stream_client.READY:
                self.close()
                raise RuntimeError(f"a stream load process did not start: {said}")

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    def run(self, job: Job, streams: int, seconds: float, cpu: Cpu, sample_every: float = 0.0) -> StreamRun:
        """`streams` streams of `job` for `seconds` from when all of them have sent their first request (less
        when an age run's streams all reach its target)."""
        if self.broken:
            raise RuntimeError(f"the stream load processes are gone: {self.broken}")
        self.shared.reset()
        busy: dict[Pipe, Outcome | str | None] = {}
        for slot, pipe in enumerate(self.pipes):
            if share := tuple(range(slot, streams, len(self.pipes))):
                pipe.send(dataclasses.replace(job, streams=share))
                busy[pipe] = None
            else:
                self.shared.reached[slot] = 1
        try:
            self._wait_primed(busy, streams)
            start_at = time.monotonic() + START_GAP_S
            end_at = start_at + seconds
            self.shared.window[1] = end_at
            self.shared.window[0] = start_at  # last: a process reading a start reads the end too
            samples, end = self._sample(busy, start_at, end_at, cpu, sample_every, job.target_steps > 0)
        finally:
            self.shared.stop.value = 1  # on an error too: the processes finish, so that the pipes stay in step
            if not self.shared.window[0]:
                self.shared.window[1] = self.shared.window[0] = time.monotonic()
            outcomes = self._collect(busy, time.monotonic() + seconds + job.timeout + 30)
        return StreamRun.merge(outcomes, samples, start_at, end)

    def _wait_primed(self, busy: dict, streams: int) -> None:
        deadline = time.monotonic() + PRIME_TIMEOUT_S
        while sum(self.shared.primed) < streams and time.monotonic() < deadline:
            if all(result is not None for result in busy.values()):
                return  # they all finished already: they failed
            self._sleep_until(busy, time.monotonic() + POLL_S / 5)

    def _sample(
        self, busy: dict, start_at: float, end_at: float, cpu: Cpu, every: float, stop_when_reached: bool
    ) -> tuple[list[tuple[float, float]], float]:
        """Server CPU at the start, every `every` s, and at the end (or when all streams reached the target)."""
        samples: list[tuple[float, float]] = []

        def take() -> float:
            now = time.monotonic()
            if (value := cpu()) is not None:
                samples.append((now, value))
            return now

        self._sleep_until(busy, start_at)
        take()
        next_at = start_at + every if every else float("inf")
        while (now := time.monotonic()) < end_at:
            if stop_when_reached and all(self.shared.reached):
                break
            self._sleep_until(busy, min(next_at, end_at, now + POLL_S if stop_when_reached else end_at))
            if next_at <= (now := time.monotonic()) < end_at:
                take()
                next_at += every
        return samples, take()

    def _sleep_until(self, busy: dict, when: float) -> None:
        """Sleep, keeping what a load process answers early (it could not connect, or failed)."""
        while (left := when - time.monotonic()) > 0:
            waiting = [pipe for pipe, result in busy.items() if result is None]
            if not waiting:
                time.sleep(left)
                continue
            for pipe in wait(waiting, timeout=left):
                busy[pipe] = _receive(pipe)

    def _collect(self, busy: dict, deadline: float) -> list[Outcome]:
        for pipe, result in busy.items():
            if result is None:
                if not pipe.poll(max(0.0, deadline - time.monotonic())):
                    self.broken = "a load process did not finish in time"  # its answer would go to the next load
                    self.close()
                    raise RuntimeError(self.broken)
                busy[pipe] = _receive(pipe)
        if failed := [r for r in busy.values() if isinstance(r, str)]:
            raise RuntimeError(f"stream load process failed: {failed[0]}")
        return list(busy.values())


def _receive(pipe: Pipe) -> Outcome | str:
    try:
        return pipe.recv()
    except (EOFError, OSError) as exc:
        return f"the process died ({type(exc).__name__})"
