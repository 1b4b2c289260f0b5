"""The streaming part of `make bench` (issue 8): live sequences sent a few timesteps at a time, the state carried
by seqserve (v1 state tokens; V2 sequence ids on the embedded SQLite store and on Redis), against the stateless
alternative of resending the last 50 or 500 timesteps to predict with every request.

A cell is a way of streaming (`WAYS`: protocol and server) x model x new timesteps per request (`chunk`) x
timesteps sent per request (`window`; a stream sends only its new ones), always 32 concurrent streams. The load is
bench/stream_load.py's pool of client processes; the servers are the harness's seqserve (batching on and off)
plus, for the Redis rows, a `redis-server` on 127.0.0.1 (Debian package, `make test-redis`) and a seqserve using
it, started here and stopped with the others. Every way is checked once against onnxruntime before it is measured;
then rounds in a shuffled order per round (a new set of streams per measurement), bounded by `--stream-minutes`.
The age runs follow, one per way and round: 32 streams of 10-timestep requests on the small model until every
stream has seen `AGE_STEPS` timesteps (or `AGE_CAP_S` passed), comparing the requests near the streams' start
with those near the end (bench/stream_report.py turns all of it into targets and tables).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis

from bench import contenders
from bench.apps.onnx_model import SequenceSession
from bench.loadgen import LoadResult
from bench.servers import Server, ServerFailed
from bench.stream_client import BadAnswer, Job, sample
from bench.stream_load import Cpu, ProcessGroupCpu, StreamPool, StreamRun

if TYPE_CHECKING:
    from bench.run import Run

log = logging.getLogger("bench.streams")

STREAMS = 32  # concurrent streams in every cell
PROCESSES = 4  # load processes (the 2 cores are shared with the server: more would only queue)
CHUNKS = (1, 10)  # new timesteps per request
WINDOWS = (50, 500)  # timesteps the stateless alternative resends
CHECK_REQUESTS = 3
TOLERANCE = 1e-4
AGE_CHUNK = 10
AGE_WINDOW = {False: 50, True: 20}  # requests per stream in each of the early and late windows, by --quick
AGE_STEPS = {False: 10_000, True: 1_000}
AGE_CAP_S = {False: 150.0, True: 40.0}
AGE_SAMPLE_S = 0.05  # the early window can be short: its fastest stream ends it
REDIS = "redis"


@dataclass(frozen=True)
class Way:
    key: str
    label: str
    server: str
    protocol: str  # bench.stream_client.PROTOCOLS
    stateless: bool = False


WAYS = {
    w.key: w
    for w in (
        Way("v1-token", "v1 stream, state token (JSON)", "seqserve", "v1-stream"),
        Way("v2-sqlite", "V2 sequence id, SQLite store (binary)", "seqserve", "v2-sequence"),
        Way("v2-redis", "V2 sequence id, Redis store (binary)", "seqserve-redis", "v2-sequence"),
        Way("v1-token-nobatch", "v1 stream, state token (JSON), batching off", "seqserve-nobatch", "v1-stream"),
        Way("v1-window", "stateless v1 predict (JSON), resending the window", "seqserve", "v1-window", True),
        Way("v2-window", "stateless V2 infer (binary), resending the window", "seqserve", "v2-window", True),
    )
}
AGED = ("v1-token", "v2-sqlite", "v2-redis")


@dataclass(frozen=True, order=True)
class StreamCell:
    model: str
    way: str
    chunk: int  # new timesteps per request
    window: int  # timesteps sent per request (= chunk for a stream)
    streams: int = STREAMS

    def describe(self) -> str:
        sent = f", sending {self.window}" if self.window != self.chunk else ""
        return f"{WAYS[self.way].label} {self.model} {self.chunk} new{sent} c{self.streams}"


def full(models: list[str]) -> list[StreamCell]:
    cells = []
    for m in models:
        cells += [StreamCell(m, way, c, c) for way in AGED for c in CHUNKS]
        cells += [StreamCell(m, "v1-window", 1, 1), StreamCell(m, "v2-window", 1, 1)]
        cells += [StreamCell(m, "v1-window", c, w) for w in WINDOWS for c in CHUNKS]
    cells += [StreamCell(models[-1], "v1-token-nobatch", c, c) for c in CHUNKS]
    return sorted(cells)


def quick(models: list[str]) -> list[StreamCell]:
    first, large = models[0], models[-1]
    cells = [StreamCell(first, way, 1, 1) for way in (*AGED, "v1-window", "v2-window")]
    cells += [StreamCell(first, "v1-window", 1, WINDOWS[0])]
    cells += [StreamCell(large, way, 1, 1) for way in ("v1-token", "v1-token-nobatch")]
    return sorted(cells)


@dataclass(frozen=True)
class AgeResult:
    """One age run: the requests near the streams' start against those near the end."""

    way: str
    model: str
    chunk: int
    target: int  # the age every stream was to reach
    reached: int  # the age every stream reached
    early: LoadResult
    late: LoadResult
    early_step: float  # median age of the requests in each window
    late_step: float
    errors: int
    round: int = 1


@dataclass
class StreamResults:
    processes: int
    age_steps: int
    age_window: int  # requests
    measured: dict[StreamCell, list[LoadResult]] = field(default_factory=lambda: defaultdict(list))
    ages: dict[str, list[AgeResult]] = field(default_factory=dict)  # by way, one per round
    truncated: str = ""

    def write(self, path: Path) -> None:
        """Every measurement of every round and both windows of each age run, for whoever wants more."""
        cells = [
            {**dataclasses.asdict(cell), "round": i + 1, **dataclasses.asdict(result), "rps": result.rps}
            for cell, runs in self.measured.items()
            for i, result in enumerate(runs)
        ]
        ages = [dataclasses.asdict(age) for runs in self.ages.values() for age in runs]
        path.write_text(json.dumps({"cells": cells, "ages": ages}, indent=1))


class RedisServer(Server):
    """`redis-server` without persistence on 127.0.0.1; ready once it answers PING."""

    def _ready(self) -> bool:
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


# ------------------------------------------------------------------------------------------------ servers


def start_redis(run: Run, stack: contextlib.ExitStack) -> RedisServer | None:
    """A redis-server for the Redis rows, or None (the reason in the report) when it cannot run here."""
    binary = shutil.which("redis-server")
    if binary is None:
        run.skipped.append(f"{WAYS['v2-redis'].label}: SKIPPED: redis-server is not installed (`make test-redis`)")
        return None
    logs, port = run.options.results / "logs", run.ports.take()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--daemonize", "no", "--dir", str(logs)]
    server = RedisServer(REDIS, argv, port, "", logs / "redis.log")
    stack.callback(server.stop)
    server.start()
    try:
        server.wait_ready(30)
    except ServerFailed as exc:
        server.stop()
        run.skipped.append(f"{WAYS['v2-redis'].label}: SKIPPED: {exc}")
        return None
    log.info("redis-server ready at %s", server.url)
    return server


def start_servers(run: Run, cells: list[StreamCell], stack: contextlib.ExitStack) -> RedisServer | None:
    """The seqserve servers the cells need that the harness has not started yet; Redis and its seqserve here."""
    o, needed, extra = run.options, {WAYS[c.way].server for c in cells}, {}
    store = start_redis(run, stack) if "seqserve-redis" in needed else None
    if store is not None:
        env = {"SEQSERVE_SEQUENCE_STORE": store.url}
        logs = o.results / "logs"
        extra["seqserve-redis"] = lambda: contenders.seqserve(
            "seqserve-redis", True, run.repository, run.ports.take(), o.budget, logs, env
        )
    else:
        needed.discard("seqserve-redis")
    run.start_servers(needed - set(run.servers), stack, extra)
    return store


# -------------------------------------------------------------------------------------------------- load


@dataclass
class Streaming:
    run: Run
    pool: StreamPool
    store: RedisServer | None
    results: StreamResults
    seeds: itertools.count = field(default_factory=lambda: itertools.count(random.randrange(1, 1 << 30)))
    sessions: dict[str, SequenceSession] = field(default_factory=dict)

    def job(self, cell: StreamCell, target_steps: int = 0) -> Job:
        way = WAYS[cell.way]
        port = self.run.servers[way.server].port
        return Job(way.protocol, cell.model, cell.chunk, cell.window, port, next(self.seeds), target_steps=target_steps)

    def cpu(self, way: Way) -> Cpu:
        """The server's CPU seconds; for the Redis rows with redis-server's, which does part of the work."""
        servers = [self.run.servers[way.server], *([self.store] if way.key == "v2-redis" and self.store else [])]
        return ProcessGroupCpu([s.process.pid for s in servers if s.process is not None])

    # ------------------------------------------------------------------------------------------ checks

    def check(self, cell: StreamCell) -> None:
        """One stream of the cell's kind, CHECK_REQUESTS requests: each answer within TOLERANCE of onnxruntime
        run in-process on every timestep the model has read (BadAnswer otherwise)."""
        if cell.model not in self.sessions:
            self.sessions[cell.model] = SequenceSession(self.run.models[cell.model].onnx)
        session = self.sessions[cell.model]
        data, samples = asyncio.run(sample(self.job(cell), CHECK_REQUESTS))
        for i, got in enumerate(samples):
            expected = session.probabilities(data.timesteps(*got.seen)[None])[0, -cell.chunk :]
            if got.probabilities.shape != expected.shape:
                raise BadAnswer(
                    f"request {i + 1}: probabilities of shape {got.probabilities.shape}, not {expected.shape}"
                )
            worst = float(np.max(np.abs(got.probabilities - expected)))
            if not worst <= TOLERANCE:
                raise BadAnswer(f"request {i + 1}: probabilities differ from onnxruntime by {worst:.2e}")

    def checked(self, cells: list[StreamCell]) -> list[StreamCell]:
        keep, verdicts = [], {}
        for cell in cells:
            if WAYS[cell.way].server not in self.run.servers:
                continue
            if (key := (cell.way, cell.model, cell.chunk, cell.window)) not in verdicts:
                verdicts[key] = self._verdict(cell)
            if verdicts[key]:
                keep.append(cell)
        return keep

    def _verdict(self, cell: StreamCell) -> bool:
        try:
            self.check(cell)
            return True
        except (BadAnswer, OSError, KeyError, ValueError) as exc:
            self.run.skipped.append(f"{cell.describe()}: SKIPPED: wrong answer: {type(exc).__name__}: {exc}")
            log.warning("%s", self.run.skipped[-1])
            return False

    # ------------------------------------------------------------------------------------------ rounds

    def measure(self, cell: StreamCell, seconds: float) -> StreamRun:
        return self.pool.run(self.job(cell), cell.streams, seconds, self.cpu(WAYS[cell.way]))

    def rounds(self, cells: list[StreamCell]) -> None:
        """Every cell once per round, in a new seeded order per round, until --stream-minutes have passed."""
        o, results = self.run.options, self.results
        deadline = time.monotonic() + o.stream_minutes * 60
        total, done = len(cells) * o.rounds, 0
        for r in range(o.rounds):
            for cell in random.Random(r).sample(cells, len(cells)):
                if time.monotonic() > deadline:
                    results.truncated = f"stopped after {done} of {total} stream measurements: --stream-minutes"
                    log.warning("%s %g", results.truncated, o.stream_minutes)
                    return
                done += 1
                try:
                    if r == 0 and o.warmup > 0:
                        self.measure(cell, o.warmup)
                    out = self.measure(cell, o.duration)
                except RuntimeError as exc:
                    self.run.skipped.append(f"{cell.describe()}, round {r + 1}: FAILED: {exc}")
                    log.warning("%s", self.run.skipped[-1])
                    continue
                results.measured[cell].append(result := out.result())
                client = f"load generator {out.client_cpu_us_per_request:.0f} us CPU/req"
                log.info("[%d/%d] %s: %s, %s; %s", done, total, cell.describe(), result, _cpu(result), client)

    # -------------------------------------------------------------------------------------------- ages

    def age(self, way: str, model: str, round_: int = 1) -> AgeResult | None:
        """32 streams of AGE_CHUNK-timestep requests until every one has seen `age_steps` timesteps (streams run at
        different speeds: the kernel hands their connections to the server's workers unevenly). Early window: from
        the start until the fastest stream has answered `age_window` requests, so every request in it comes from
        a stream younger than that; late window: the slowest stream's last `age_window` requests, so every request
        in it comes from a stream at least that old."""
        o, target = self.run.options, self.results.age_steps
        cell = StreamCell(model, way, AGE_CHUNK, AGE_CHUNK)
        out = self.pool.run(self.job(cell, target), STREAMS, AGE_CAP_S[o.quick], self.cpu(WAYS[way]), AGE_SAMPLE_S)
        reached, span = min(target, out.slowest()), self.results.age_window * AGE_CHUNK
        if reached < 3 * span:
            self.run.skipped.append(f"age run {cell.describe()}: SKIPPED: the slowest stream reached only {reached}")
            return None
        early = out.start_at, float(out.reach_times(AGE_CHUNK + span).min())
        late = float(out.reach_times(reached - span).max()), float(out.reach_times(reached).max())
        return AgeResult(
            way,
            model,
            AGE_CHUNK,
            target,
            reached,
            out.result(*early),
            out.result(*late),
            out.median_step(*early),
            out.median_step(*late),
            out.errors,
            round_,
        )

    def ages(self, model: str) -> None:
        """An age run per way in each round: each window lasts a fraction of a second, so one run can catch a
        passing stall in either; the verdict takes the median of the rounds' ratios, as the other targets do."""
        for r in range(self.run.options.rounds):
            for way in AGED:
                if WAYS[way].server not in self.run.servers:
                    continue
                try:
                    result = self.age(way, model, r + 1)
                except RuntimeError as exc:
                    self.run.skipped.append(f"age run {WAYS[way].label}, round {r + 1}: FAILED: {exc}")
                    log.warning("%s", self.run.skipped[-1])
                    continue
                if result is not None:
                    self.results.ages.setdefault(way, []).append(result)
                    log.info(
                        "age %s, round %d: CPU %s -> %s, p50 %.2f -> %.2f ms (steps ~%.0f -> ~%.0f)",
                        WAYS[way].label,
                        result.round,
                        _cpu(result.early),
                        _cpu(result.late),
                        result.early.p50_ms,
                        result.late.p50_ms,
                        result.early_step,
                        result.late_step,
                    )


def _cpu(result: LoadResult) -> str:
    cpu = result.cpu_us_per_request
    return f"{cpu:.0f} us CPU/req" if cpu is not None else "CPU n/a"


def execute(run: Run, stack: contextlib.ExitStack) -> StreamResults:
    """Start what the streaming cells need, check every way, measure the rounds, then the age runs."""
    o, models = run.options, list(run.models)
    cells = quick(models) if o.quick else full(models)
    store = start_servers(run, cells, stack)
    pool = StreamPool(PROCESSES)
    stack.callback(pool.close)
    streaming = Streaming(run, pool, store, StreamResults(PROCESSES, AGE_STEPS[o.quick], AGE_WINDOW[o.quick]))
    cells = streaming.checked(cells)
    streaming.rounds(cells)
    streaming.ages(models[0])
    return streaming.results
