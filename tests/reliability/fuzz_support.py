"""What the fuzz tests share (a module of their own: tests/reliability/ has no conftest of ours).

`run_schemathesis` drives the `st` command line against a running server's `/openapi.json`, with the hooks of
tests/reliability/fuzz_hooks.py, and repeats it with the next seed until `cases` requests have been sent or the time
is spent; each run after the first skips the deterministic phases (examples, coverage) that the first one ran. It
returns how many cases ran, the statuses per operation and what `st` printed. `ServerWatch` records the workers
of a gunicorn server, to tell afterwards that none of them died and that the log holds no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.service.conftest import Server

ST = str(Path(sys.executable).with_name("st"))
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "no_internal_details",  # tests/reliability/fuzz_hooks.py
)
MODELS = ("lstm_step", "gru_last")
MAX_OUTPUT = 30_000


@dataclass
class FuzzResult:
    cases: int = 0
    runs: int = 0
    seconds: float = 0.0
    failed_runs: list[str] = field(default_factory=list)  # the output of every run that failed
    statuses: Counter[int] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"{self.cases} cases in {self.runs} runs of st, {self.seconds:.0f} s, {len(self.operations)} operations; "
            f"statuses {statuses}"
        )


def run_schemathesis(
    server: Server,
    workdir: Path,
    *,
    cases: int,
    examples: int,
    max_seconds: float,
    forbidden: tuple[str, ...],
    seed: int = 1,
) -> FuzzResult:
    """`st run` until `cases` requests were sent (or `max_seconds` are spent); `examples` per operation and run.
    `forbidden`: strings no answer may contain (the server's paths)."""
    result = FuzzResult()
    record = workdir / "calls.txt"
    started = time.monotonic()
    while result.cases < cases and time.monotonic() - started < max_seconds:
        phases = "examples,coverage,fuzzing" if result.runs == 0 else "fuzzing"
        left = max(1, int(max_seconds - (time.monotonic() - started)))
        output = _st_run(server, record, phases, examples, seed + result.runs, left, forbidden)
        result.runs += 1
        if output is not None:
            result.failed_runs.append(output)
        _count(record, result)
    result.seconds = time.monotonic() - started
    return result


def _st_run(
    server: Server, record: Path, phases: str, examples: int, seed: int, seconds: int, forbidden: tuple[str, ...]
) -> str | None:
    """One `st run`, stopped after `seconds`; None when it passed, else its output (the failures and how to
    reproduce them)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SCHEMATHESIS_HOOKS": "tests.reliability.fuzz_hooks",
        "FUZZ_MODELS": ",".join(MODELS),
        "FUZZ_RECORD": str(record),
        "FUZZ_FORBIDDEN": "|".join(forbidden),
    }
    command = [
        ST, "run", f"{server.url}/openapi.json",
        "--phases", phases,
        "--checks", ",".join(CHECKS),
        "--max-examples", str(examples),
        "--seed", str(seed),
        "--workers", "1",  # CPython 3.11's ast.parse is not thread-safe, and hypothesis parses lambdas
        "--no-shrink",
        "--request-timeout", "30",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, env=env, cwd=record.parent, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as exc:
        return f"st run did not finish within {seconds} s: {str(exc.stdout or '')[-MAX_OUTPUT:]}"
    if done.returncode == 0:
        return None
    return (done.stdout + done.stderr)[-MAX_OUTPUT:]


def _count(record: Path, result: FuzzResult) -> None:
    result.cases, result.statuses, result.operations = 0, Counter(), Counter()
    if not record.exists():
        return
    for line in record.read_text().splitlines():
        method, path, status = line.split(" ")
        result.cases += 1
        result.statuses[int(status)] += 1
        result.operations[f"{method} {path}"] += 1


def worker_pids(server: Server) -> set[int]:
    """The gunicorn master's children, from /proc."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


@dataclass
class ServerWatch:
    """A server's workers at the start; `problems()` says whether it is still the same healthy server."""

    server: Server
    workers: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.workers = worker_pids(self.server)

    def problems(self) -> list[str]:
        found = []
        if self.server.process.poll() is not None:
            return [f"gunicorn exited with {self.server.process.returncode}"]
        if (now := worker_pids(self.server)) != self.workers:
            found.append(f"workers changed from {sorted(self.workers)} to {sorted(now)} (a worker died)")
        if self.server.get("/health").status_code != 200:
            found.append("/health is not 200")
        logs = self.server.logs()
        for sign in ("Traceback", "unhandled error", "WORKER TIMEOUT", "Worker exiting"):
            if sign in logs:
                found.append(f"the server log shows {sign!r}")
        return found
