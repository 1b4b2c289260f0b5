"""Closed-loop load: `wrk` with one thread (it shares the 2 cores with the servers, so it gets at most one of
them) and a Lua script that POSTs a body read from a file; a small Python generator where wrk is missing.

Each run is bounded in time (`duration`) and every request in time (`timeout`); the count follows from both.

A run also says what the load generator itself cost in CPU (`client_cpu_s`): it shares the cores with the server, so
at a given req/s every microsecond it spends is one the server cannot, while the in-process limit has no client.
wrk's is read from the rusage of the waited-for child (nothing else of the benchmark ends while wrk runs: the
servers live across runs); the Python generator's is its process's CPU, as it runs in the benchmark's process.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import resource
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.payloads import Body

LUA_SCRIPT = Path(__file__).with_name("wrk") / "post.lua"
MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class LoadResult:
    requests: int  # answered with 2xx/3xx
    errors: int  # non-2xx/3xx answers, socket errors and timeouts
    duration_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: float | None = None  # CPU time the server (all its processes) used during the measurement
    client_cpu_s: float | None = None  # CPU time the load generator used (None: not measured, or in-process)

    @property
    def cpu_us_per_request(self) -> float | None:
        return self.cpu_s / self.requests * 1e6 if self.cpu_s is not None and self.requests else None

    @property
    def client_cpu_us_per_request(self) -> float | None:
        return self.client_cpu_s / self.requests * 1e6 if self.client_cpu_s is not None and self.requests else None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def __str__(self) -> str:
        errors = f", {self.errors} errors" if self.errors else ""
        return f"{self.rps:.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms{errors}"


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_version() -> str:
    if not have_wrk():
        return "wrk absent"
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0]


def run_wrk(url: str, body: Body, concurrency: int, duration: float, timeout: float = 10.0) -> LoadResult:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={round(timeout)}s", "--latency"]
    cmd += ["-s", str(LUA_SCRIPT), url, "--", str(body.path), *body.headers]
    before = _children_cpu_s()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 30, check=False)
    client_cpu_s = _children_cpu_s() - before
    line = next((x for x in out.stdout.splitlines() if x.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    r = json.loads(line[len(MARKER) :])
    socket_errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return LoadResult(
        requests=r["requests"] - r["status_errors"],
        errors=r["status_errors"] + socket_errors,
        duration_s=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        client_cpu_s=client_cpu_s,
    )


def _children_cpu_s() -> float:
    """User and system CPU of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_python(url: str, body: Body, concurrency: int, duration: float, timeout: float = 10.0) -> LoadResult:
    """The fallback: one thread and one keep-alive connection per concurrent client (weaker than wrk: the GIL
    caps it, so it understates the fastest servers)."""
    cpu = time.process_time()
    result = summarize(*closed_loop(url, body.read(), body.header_dict(), concurrency, duration, timeout))
    return dataclasses.replace(result, client_cpu_s=time.process_time() - cpu)


def closed_loop(
    url: str, data: bytes, headers: dict[str, str], concurrency: int, duration: float, timeout: float = 10.0
) -> tuple[list[float], int, float]:
    """`concurrency` threads POST `data` back to back for `duration` seconds; (latencies in s, errors, elapsed).
    Also the load of deploy/gpu_load.py, which runs it in several processes to get past the GIL."""
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                conn.request("POST", parts.path, body=data, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status < 400
            except (OSError, http.client.HTTPException):
                conn.close()
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[0] += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def summarize(latencies_s: list[float], errors: int, duration_s: float) -> LoadResult:
    if len(latencies_s) < 2:
        return LoadResult(len(latencies_s), errors, duration_s, float("nan"), float("nan"))
    cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return LoadResult(len(latencies_s), errors, duration_s, cuts[49] * 1e3, cuts[98] * 1e3)


def pick(name: str = "auto") -> str:
    """`auto`: wrk where it is installed, else the Python generator."""
    if name == "auto":
        return "wrk" if have_wrk() else "python"
    if name == "wrk" and not have_wrk():
        raise SystemExit("error: wrk is not installed (apt-get install -y wrk, or --loadgen python)")
    return name


def run_load(
    url: str, body: Body, concurrency: int, duration: float, timeout: float = 10.0, loadgen: str = "wrk"
) -> LoadResult:
    runner = run_wrk if loadgen == "wrk" else run_python
    return runner(url, body, concurrency, duration, timeout)
