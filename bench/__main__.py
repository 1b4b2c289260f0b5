"""`python -m bench [--quick]`: seqserve against the limit, the framework's ceiling, a tutorial server and the peers.

Prints the targets and the table, and writes them to docs/benchmarks.md. Everything it starts listens on
127.0.0.1 (ports 18000-18999) and is stopped when it ends, however it ends. A full run takes about 20 minutes
(3 rounds) and the streaming part about 10 more; `--quick` about 4 (1 round of the target cells). Install the peers
first with `make bench-peers`. `--part streams` runs only the streaming rows (bench/streams.py), `--part main` all
but them; a partial run writes bench/results/benchmarks-<part>.md unless --out says otherwise, never the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import signal
import sys
from pathlib import Path

from bench import document, loadgen, report, run, stream_report
from bench.contenders import ROOT, CpuBudget
from bench.matrix import CONTENDERS

log = logging.getLogger("bench")


def parse(argv: list[str]) -> run.Options:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of the target cells, short loads")
    p.add_argument("--rounds", type=int, help="rounds over the matrix (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="whole seconds per measurement (default 4; quick 2)")
    p.add_argument("--warmup", type=int, help="whole seconds of load before a cell's first measurement (default 1)")
    p.add_argument("--max-minutes", type=float, help="stop issuing measurements after this (default 22; quick 4)")
    p.add_argument("--workers", type=int, help="server worker processes (default: gunicorn.conf.py's, min(cores, 4))")
    p.add_argument("--worker-class", choices=["gevent", "gthread"], help="gunicorn worker class (default: gevent)")
    p.add_argument("--threads", type=int, help="gthread threads per worker (default: gunicorn.conf.py's, 16)")
    p.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), default=(), help="measure only these contenders")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installed")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="cache, logs, raw results")
    p.add_argument("--out", type=Path, help="the report to write (default: docs/benchmarks.md; see --part)")
    p.add_argument("--part", choices=["all", "main", "streams"], default="all", help="main: all but the streaming rows")
    p.add_argument(
        "--stream-minutes", type=float, help="stop issuing stream measurements after this (default 10; quick 3)"
    )
    a = p.parse_args(argv)
    results = a.results.resolve()
    default_out = ROOT / "docs" / "benchmarks.md" if a.part == "all" else results / f"benchmarks-{a.part}.md"
    return run.Options(
        quick=a.quick,
        rounds=a.rounds or (1 if a.quick else 3),
        duration=a.duration or (2 if a.quick else 4),
        warmup=a.warmup if a.warmup is not None else 1,
        max_minutes=a.max_minutes or (4.0 if a.quick else 22.0),
        budget=CpuBudget.service_defaults(a.workers, a.threads, a.worker_class),
        results=results,
        out=a.out or default_out,
        command=shlex.join(["python", "-m", "bench", *argv]),
        only=tuple(a.only),
        loadgen=loadgen.pick(a.loadgen),
        part=a.part,
        stream_minutes=a.stream_minutes or (3.0 if a.quick else 10.0),
    )


def write_measurements(outcome: run.Run, path: Path) -> None:
    """Every measurement of every round, for whoever wants more than the medians."""
    rows = [
        {**dataclasses.asdict(cell), "round": i + 1, **dataclasses.asdict(result), "rps": result.rps}
        for cell, results in outcome.measured.items()
        for i, result in enumerate(results)
    ]
    path.write_text(json.dumps(rows, indent=1))


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so every server started is stopped


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    options = parse(sys.argv[1:] if argv is None else argv)
    outcome, summaries, elapsed = run.execute(options)
    models = list(outcome.models)
    found = report.targets(summaries, models) if options.part != "streams" else []
    if outcome.stream_results is not None:
        found += stream_report.targets(outcome.stream_results, models)
    if options.quick:
        found = [t for t in found if t.passed is not None]
    skipped = "SKIPPED: `--part streams`"
    validation = run.validation_budget(outcome) if options.part != "streams" else skipped
    beside = run.beside_the_model(outcome) if options.part != "streams" else skipped
    text = document.render(outcome, summaries, found, validation, elapsed, beside)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    if options.part != "streams":
        write_measurements(outcome, options.results / "measurements.json")
    if outcome.stream_results is not None:
        outcome.stream_results.write(options.results / "stream-measurements.json")
    print(text)
    log.info("wrote %s", options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
