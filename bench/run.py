"""One benchmark run: models and payloads, every server started, every answer checked once, then rounds of
load in a shuffled order per round (the machine is noisy), medians, targets, and the report."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import logging
import random
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import contenders, fixtures, lane_cost, matrix, payloads, raw, report, streams, validation_cost
from bench.apps.onnx_model import SequenceSession
from bench.loadgen import LoadResult, run_load
from bench.matrix import CONTENDERS, Cell
from bench.servers import PortAllocator, Server, ServerFailed

QUIET = {"SEQSERVE_LOG_REQUESTS": "false"}  # as KServe and MLServer run here: no access log
log = logging.getLogger("bench")


@dataclass(frozen=True)
class Options:
    quick: bool
    rounds: int
    duration: int  # whole seconds per measured cell (wrk counts whole seconds)
    warmup: int  # seconds of load before a cell's first measurement
    max_minutes: float  # the load phase stops issuing cells after this
    budget: contenders.CpuBudget
    results: Path
    out: Path
    command: str
    only: tuple[str, ...] = ()
    loadgen: str = "wrk"  # or "python"
    ready_timeout: float = 180.0
    part: str = "all"  # "main": without the streaming rows; "streams": only them (bench/streams.py)
    stream_minutes: float = 10.0  # the streaming rounds stop issuing measurements after this


@dataclass
class Run:
    options: Options
    models: dict[str, fixtures.ExportedModel] = field(default_factory=dict)
    bodies: dict[tuple[str, str], payloads.Body] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    measured: dict[Cell, list[LoadResult]] = field(default_factory=lambda: defaultdict(list))
    truncated: str = ""
    ports: PortAllocator = field(default_factory=PortAllocator)
    stream_results: streams.StreamResults | None = None

    # ------------------------------------------------------------------------------------------- servers

    def start_servers(
        self, needed: set[str], stack: contextlib.ExitStack, extra: dict[str, Callable[[], Server]] | None = None
    ) -> None:
        """Start the `needed` servers (`extra`: factories of servers only a part of the benchmark uses), then
        wait until every server started so far is ready."""
        o, logs, ports = self.options, self.options.results / "logs", self.ports
        factories = {
            "seqserve": lambda: contenders.seqserve("seqserve", True, self.repository, ports.take(), o.budget, logs),
            "seqserve-nobatch": lambda: contenders.seqserve(
                "seqserve-nobatch", False, self.repository, ports.take(), o.budget, logs
            ),
            "seqserve-quiet": lambda: contenders.seqserve(
                "seqserve-quiet", True, self.repository, ports.take(), o.budget, logs, QUIET
            ),
            "bare": lambda: contenders.bare(ports.take(), o.budget, logs),
            "naive": lambda: contenders.naive(self.models, ports.take(), logs),
            "kserve": lambda: contenders.kserve(self.models, ports, o.budget, logs),
            "mlserver": lambda: contenders.mlserver("mlserver", self.models, ports, o.budget, logs, pool=False),
            "mlserver-pool": lambda: contenders.mlserver(
                "mlserver-pool", self.models, ports, o.budget, logs, pool=True
            ),
            **(extra or {}),
        }
        missing = {
            "seqserve": contenders.seqserve_missing(),
            "seqserve-nobatch": contenders.seqserve_missing(),
            "seqserve-quiet": contenders.seqserve_missing(),
            "kserve": contenders.peer_missing("kserve"),
            "mlserver": contenders.peer_missing("mlserver"),
            "mlserver-pool": contenders.peer_missing("mlserver"),
        }
        for name in sorted(needed):
            if reason := missing.get(name):
                self.skip_server(name, reason)
                continue
            server = factories[name]()
            stack.callback(server.stop)
            server.start()
            self.servers[name] = server
        for name, server in list(self.servers.items()):
            try:
                server.wait_ready(o.ready_timeout)
                log.info("%s ready at %s", name, server.base_url)
            except ServerFailed as exc:
                server.stop()
                del self.servers[name]
                self.skip_server(name, str(exc))

    @property
    def repository(self) -> Path:
        return self.options.results / "model_repository"

    def skip_server(self, server: str, reason: str) -> None:
        users = ", ".join(c.label for c in CONTENDERS.values() if c.server == server) or server
        message = f"{users}: SKIPPED: {reason}"
        log.warning("%s", message)
        self.skipped.append(message)

    # ------------------------------------------------------------------------------------------- answers

    def expected(self, model: str, scenario: str) -> np.ndarray:
        features = payloads.scenario(scenario).features()
        return SequenceSession(self.models[model].onnx).probabilities(features)

    def url(self, cell: Cell) -> str:
        contender = CONTENDERS[cell.contender]
        return self.servers[contender.server].base_url + contender.path.format(model=cell.model)

    def check(self, cell: Cell) -> None:
        """One request with the cell's body: 200 and the right answer, or `BadAnswer`."""
        contender = CONTENDERS[cell.contender]
        body = self.bodies[contender.body, cell.scenario]
        server = self.servers[contender.server]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request("POST", contender.path.format(model=cell.model), body=body.read(), headers=body.header_dict())
            response = conn.getresponse()
            data, headers = response.read(), dict(response.getheaders())
        finally:
            conn.close()
        name = f"{contender.label} {cell.model} {cell.scenario}"
        if response.status != 200:
            raise payloads.BadAnswer(f"{name}: HTTP {response.status}: {data[:200]!r}")
        model = cell.model if contender.per_model else next(iter(self.models))
        payloads.CHECKS[contender.check](name, data, headers, self.expected(model, cell.scenario))

    def checked(self, cells: list[Cell]) -> list[Cell]:
        """The cells whose server runs and whose answer is right; a reason logged for the others."""
        keep, verdicts = [], {}
        for cell in cells:
            contender = CONTENDERS[cell.contender]
            if contender.server is not None and contender.server not in self.servers:
                continue
            key = (cell.contender, cell.model, cell.scenario)
            if key not in verdicts:
                verdicts[key] = self._verdict(cell)
            if verdicts[key] is None:
                keep.append(cell)
        return keep

    def _verdict(self, cell: Cell) -> str | None:
        if CONTENDERS[cell.contender].server is None:
            return None
        try:
            self.check(cell)
            return None
        except (payloads.BadAnswer, OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            message = f"{CONTENDERS[cell.contender].label} {cell.model} {cell.scenario}: SKIPPED: wrong answer: {exc}"
            log.warning("%s", message)
            self.skipped.append(message)
            return message

    # ---------------------------------------------------------------------------------------------- load

    def measure(self, cell: Cell, seconds: float) -> LoadResult:
        if cell.contender == "raw":
            budget = self.options.budget
            features = payloads.scenario(cell.scenario).features()
            return raw.measure(self.models[cell.model], features, budget.workers, budget.intra_op_threads, seconds)
        body = self.bodies[CONTENDERS[cell.contender].body, cell.scenario]
        server = self.servers[CONTENDERS[cell.contender].server]
        cpu = server.cpu_seconds()
        result = run_load(self.url(cell), body, cell.concurrency, seconds, loadgen=self.options.loadgen)
        after = server.cpu_seconds()
        return dataclasses.replace(result, cpu_s=after - cpu if cpu is not None and after is not None else None)

    def rounds(self, cells: list[Cell]) -> None:
        """Per round, every scenario's cells in a fresh random order (seeded), so that no contender always runs
        right after the same neighbour or at the same point of the machine's drift."""
        o = self.options
        by_scenario: dict[str, list[Cell]] = defaultdict(list)
        for cell in cells:
            by_scenario[cell.scenario].append(cell)
        deadline = time.monotonic() + o.max_minutes * 60
        total, done = len(cells) * o.rounds, 0
        for r in range(o.rounds):
            shuffle = random.Random(r)
            for cell in [c for s in sorted(by_scenario) for c in shuffle.sample(by_scenario[s], len(by_scenario[s]))]:
                if time.monotonic() > deadline:
                    self.truncated = f"stopped after {done} of {total} measurements: --max-minutes {o.max_minutes:g}"
                    log.warning("%s", self.truncated)
                    return
                try:
                    if r == 0 and o.warmup > 0:
                        self.measure(cell, o.warmup)
                    result = self.measure(cell, o.duration)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    self.skipped.append(f"{describe(cell)}, round {r + 1}: FAILED: {exc}")
                    log.warning("%s", self.skipped[-1])
                    continue
                finally:
                    done += 1
                self.measured[cell].append(result)
                log.info("[%d/%d] %s: %s", done, total, describe(cell), result)


def describe(cell: Cell) -> str:
    clients = "in-process" if cell.concurrency == matrix.RAW_CONCURRENCY else f"c{cell.concurrency}"
    return f"{CONTENDERS[cell.contender].label} {cell.model} {cell.scenario} {clients}"


def select_cells(options: Options, models: list[str]) -> list[Cell]:
    cells = matrix.quick(models) if options.quick else matrix.full(models)
    if options.only:
        cells = [c for c in cells if c.contender in options.only]
    return cells


def validation_budget(run: Run) -> validation_cost.ValidationCost | str:
    if reason := validation_cost.unavailable():
        return f"SKIPPED: {reason}"
    model = next(iter(run.models))
    body = run.bodies["v1-json", "64x50"].read()
    try:
        return validation_cost.measure(run.repository, model, "64x50", body, 1.0 if run.options.quick else 3.0)
    except Exception as exc:  # the report says why instead of losing the whole run
        log.exception("validation-cost micro-benchmark failed")
        return f"FAILED: {type(exc).__name__}: {exc}"


def beside_the_model(run: Run) -> list[lane_cost.LaneCost] | str:
    if reason := validation_cost.unavailable():
        return f"SKIPPED: {reason}"
    model = next(iter(run.models))
    try:
        return lane_cost.measure(run.repository, model, 1.0 if run.options.quick else 3.0)
    except Exception as exc:  # the report says why instead of losing the whole run
        log.exception("lane-cost micro-benchmark failed")
        return f"FAILED: {type(exc).__name__}: {exc}"


def execute(options: Options) -> tuple[Run, dict[Cell, report.Summary], float]:
    started = time.monotonic()
    run = Run(options)
    run.models = fixtures.build_models(options.results)
    run.bodies = payloads.write_bodies(options.results / "bodies")
    cells = select_cells(options, list(run.models)) if options.part != "streams" else []
    needed = {CONTENDERS[c.contender].server for c in cells} - {None}
    with contextlib.ExitStack() as stack:
        run.start_servers(needed, stack)
        cells = run.checked(cells)
        run.rounds(cells)
        if options.part != "main":
            run.stream_results = streams.execute(run, stack)
    summaries = {cell: report.summarize(cell, results) for cell, results in run.measured.items()}
    return run, summaries, time.monotonic() - started
