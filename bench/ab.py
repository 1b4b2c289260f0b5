"""Interleaved A/B: the same cells against servers started from different checkouts (or with different settings),
alternating short rounds, so that both sides see the same minutes of this noisy machine.

    python -m bench.ab --side base=../ab-base --side new=. --side bare=.@bench.apps.bare:create_app() \
        --cell h32/v1-json/1x50/8 --cell h32/v2-binary/64x50/8 --rounds 5 --seconds 5

A side is NAME=CHECKOUT[@APP] (APP defaults to `service:create_app()`); `--env NAME:KEY=VALUE` sets a variable for
one side (`--env new:SEQSERVE_INLINE_BELOW_MS=5`). Every side runs under its checkout's gunicorn.conf.py with the
benchmark's CPU budget and model repository (`make bench` builds them into bench/results/). A side whose APP is not
seqserve's answers every cell at `/predict` (the bare endpoint). Per cell and side it prints the median over
rounds of req/s, server CPU per request, p50 and p99, and the range of the CPU column: two full `make bench` runs
an hour apart cannot resolve differences under ~30 % per row here; interleaved rounds resolve a few percent.

`--warm CELL` (repeatable) has every side serve these cells for `--warm-seconds` each before the rounds, unmeasured,
one side after the other and each side's cells back to back, as one server meets them in a full run: a server that
has run a while (its thread pool grown where one cell's model still had runs queued when the next began, other models
run, its batcher's costs learnt), as the full benchmark's servers have by the time they reach a row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import fixtures, payloads, raw
from bench.contenders import ROOT, CpuBudget
from bench.loadgen import LoadResult, run_wrk
from bench.matrix import V1, V2
from bench.report import paired
from bench.servers import PortAllocator, Server

SEQSERVE = "service:create_app()"
RAW = "raw"  # the pseudo-side of --raw


@dataclass(frozen=True)
class Side:
    name: str
    checkout: Path
    app: str = SEQSERVE
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Side:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise argparse.ArgumentTypeError(f"--side {spec!r}: expected NAME=CHECKOUT[@APP]")
        checkout, _, app = rest.partition("@")
        path = Path(checkout).resolve()
        if not (path / "gunicorn.conf.py").is_file():
            raise argparse.ArgumentTypeError(f"--side {spec!r}: {path} has no gunicorn.conf.py")
        return cls(name, path, app or SEQSERVE)


@dataclass(frozen=True)
class Cell:
    model: str
    body: str  # a format of bench.payloads.ENCODERS
    scenario: str
    concurrency: int

    @classmethod
    def parse(cls, spec: str) -> Cell:
        try:
            model, body, scenario, concurrency = spec.split("/")
            cell = cls(model, body, scenario, int(concurrency))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--cell {spec!r}: expected MODEL/FORMAT/SCENARIO/CLIENTS") from None
        if body not in payloads.ENCODERS:
            raise argparse.ArgumentTypeError(f"--cell {spec!r}: format is one of {sorted(payloads.ENCODERS)}")
        try:
            payloads.scenario(scenario)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--cell {spec!r}: {exc}") from None
        return cell

    def path(self, side: Side) -> str:
        if side.app != SEQSERVE:
            return "/predict"
        return (V2 if self.body.startswith("v2") else V1).format(model=self.model)

    def __str__(self) -> str:
        return f"{self.model} {self.body} {self.scenario} c{self.concurrency}"


def with_env(sides: list[Side], assignments: list[str]) -> list[Side]:
    extra: dict[str, list[tuple[str, str]]] = {}
    for item in assignments:
        name, _, assignment = item.partition(":")
        key, sep, value = assignment.partition("=")
        if not sep or name not in {s.name for s in sides}:
            raise SystemExit(f"--env {item!r}: expected SIDE:KEY=VALUE with a side named by --side")
        extra.setdefault(name, []).append((key, value))
    return [dataclasses.replace(s, env=s.env + tuple(extra.get(s.name, ()))) for s in sides]


def start(side: Side, port: int, budget: CpuBudget, results: Path) -> Server:
    env = {
        "SEQSERVE_BIND": f"127.0.0.1:{port}",
        "SEQSERVE_WORKERS": str(budget.workers),
        "SEQSERVE_WORKER_CLASS": budget.worker_class,
        "SEQSERVE_INTRA_OP_THREADS": str(budget.intra_op_threads),
        "SEQSERVE_MODEL_REPOSITORY": str(results / "model_repository"),
        "PYTHONPATH": str(side.checkout),  # this checkout's packages, not the installed (editable) ones
        **dict(side.env),
    }
    argv = [str(Path(sys.executable).parent / "gunicorn"), "--config", "gunicorn.conf.py", side.app]
    return Server(f"ab-{side.name}", argv, port, "/ready", results / "logs" / f"ab-{side.name}.log", env, side.checkout)


def measure(server: Server, url: str, body: payloads.Body, concurrency: int, seconds: int) -> LoadResult:
    before = server.cpu_seconds()
    result = run_wrk(url, body, concurrency, seconds)
    after = server.cpu_seconds()
    return dataclasses.replace(result, cpu_s=None if before is None or after is None else after - before)


def report(cell: Cell, names: list[str], measured: dict[tuple[Cell, str], list[LoadResult]]) -> str:
    lines = [f"{cell}:"]
    limit = tuple(r.rps for r in measured[cell, RAW]) if (cell, RAW) in measured else ()
    for name in names:
        runs = measured[cell, name]
        cpu = [r.cpu_us_per_request or float("nan") for r in runs]
        rps, p50, p99 = (statistics.median(getattr(r, k) for r in runs) for k in ("rps", "p50_ms", "p99_ms"))
        errors = sum(r.errors for r in runs)
        of_raw = paired(tuple(r.rps for r in runs), limit) if name != RAW else []  # within each round, as the report
        lines.append(
            f"  {name:>12}: {rps:8,.0f} req/s  {statistics.median(cpu):7,.0f} us CPU/req "
            f"(range {min(cpu):,.0f}-{max(cpu):,.0f})  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
            + (f"  {statistics.median(of_raw):6.1%} of raw" if of_raw else "")
            + (f"  {errors} errors" if errors else "")
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("--side", type=Side.parse, action="append", required=True, help="NAME=CHECKOUT[@APP]")
    p.add_argument("--env", action="append", default=[], help="SIDE:KEY=VALUE for one side")
    p.add_argument("--cell", type=Cell.parse, action="append", required=True, help="MODEL/FORMAT/SCENARIO/CLIENTS")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5, help="whole seconds per measurement")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="add onnxruntime in-process (the limit) to the rounds")
    p.add_argument("--warm", type=Cell.parse, action="append", default=[], help="a cell every side serves first")
    p.add_argument("--warm-seconds", type=int, default=4)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    sides = with_env(a.side, a.env)
    by_name = {s.name: s for s in sides}
    names = [*by_name, *([RAW] if a.raw else [])]
    if len(by_name) != len(sides) or (a.raw and RAW in by_name):
        raise SystemExit(f"--side: every side needs its own name, other than {RAW!r} with --raw")
    models = fixtures.build_models(a.results) if a.raw else {}
    bodies = payloads.write_bodies(a.results / "bodies")
    budget, ports, order = CpuBudget.service_defaults(), PortAllocator(18700), random.Random(a.seed)
    measured: dict[tuple[Cell, str], list[LoadResult]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for side in sides:
            servers[side.name] = server = start(side, ports.take(), budget, a.results)
            stack.callback(server.stop)
            server.start()
        for server in servers.values():
            server.wait_ready(180)
        for side in sides:  # what the servers have served before they are measured, back to back as in a run
            for cell in a.warm:
                body = bodies[cell.body, cell.scenario]
                run_wrk(servers[side.name].base_url + cell.path(side), body, cell.concurrency, a.warm_seconds)
        for cell in a.cell:  # a warm-up per cell and side, unmeasured
            for side in sides:
                body = bodies[cell.body, cell.scenario]
                run_wrk(servers[side.name].base_url + cell.path(side), body, cell.concurrency, 1)
        for round_ in range(a.rounds):
            pairs = list(itertools.product(a.cell, names))
            order.shuffle(pairs)
            for cell, name in pairs:
                if name == RAW:
                    features, threads = payloads.scenario(cell.scenario).features(), budget.intra_op_threads
                    result = raw.measure(models[cell.model], features, budget.workers, threads, a.seconds)
                else:
                    server, body, path = servers[name], bodies[cell.body, cell.scenario], cell.path(by_name[name])
                    result = measure(server, server.base_url + path, body, cell.concurrency, a.seconds)
                measured.setdefault((cell, name), []).append(result)
            print(f"round {round_ + 1}/{a.rounds} done", file=sys.stderr)
    for cell in a.cell:
        print(report(cell, names, measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
