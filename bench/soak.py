"""Soak: a long bounded run against one server; the workers' memory must not creep.

    python -m bench.soak [--repository DIR] [--requests 100000] [--warmup 10000] [--clients 8] [--max-seconds 1800]

Starts gunicorn (gunicorn.conf.py, 2 workers) on a free 127.0.0.1 port over the repository's first model, sends
`--warmup` requests, reads each worker's resident memory (VmRSS in /proc/PID/status), then sends `--requests` more
(every `--sample` seconds the RSS again) and reads it a last time. The requests cycle through v1 JSON and V2
binary bodies of 1 to 3 sequences of 5 to 60 steps, so batching merges and splits all the while. It stops by
itself: after the count, or after `--max-seconds` (then it fails), and stops the server by PID.

Passes (exit 0) when every request is answered 200, no worker was replaced (a restart would hide a leak), and each
worker's RSS after the run is less than `--max-growth` (5 %) above its RSS after the warm-up. Prints the figures
and writes them as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.traffic import Outcome, Request, Traffic, percentile, statuses
from modelrepo import layout

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", default=os.environ.get("SEQSERVE_MODEL_REPOSITORY", "model_repository"))
    p.add_argument("--model", help="the model to call (default: the repository's first)")
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=1800.0, help="the whole run's time limit")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--max-growth", type=float, default=0.05)
    p.add_argument("--out", default="soak-result.json")
    return p.parse_args(argv)


def bodies(name: str, features: int, seed: int = 0) -> list[Request]:
    """16 requests of varied shapes (1 to 3 sequences of 5 to 60 steps), half v1 JSON, half V2 with the binary
    tensor extension."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(16):
        batch, steps = int(rng.integers(1, 4)), int(rng.integers(5, 61))
        x = rng.normal(size=(batch, steps, features)).astype(np.float32)
        if i % 2 == 0:
            payload = orjson.dumps({"sequences": x, "outputs": ["labels"]}, option=orjson.OPT_SERIALIZE_NUMPY)
            out.append(Request("POST", f"/v1/models/{name}/predict", payload, {"Content-Type": "application/json"}))
            continue
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        )
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        out.append(Request("POST", f"/v2/models/{name}/infer", header + x.tobytes(), headers))
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def workers_of(master: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    found.append(int(entry.name))
            except OSError:
                continue
    return sorted(found)


def start_server(repository: Path, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQSERVE_", "PROMETHEUS_MULTIPROC_DIR"))}
    env |= {
        "SEQSERVE_MODEL_REPOSITORY": str(repository),
        "SEQSERVE_BIND": f"127.0.0.1:{port}",
        "SEQSERVE_WORKERS": str(workers),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [GUNICORN, "--config", "gunicorn.conf.py", "service:create_app()"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    stop(process)
    raise SystemExit(f"the server did not become ready:\n{log.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def measure(traffic: Traffic, pids: list[int], every: float) -> list[dict[int, int]]:
    """Run `traffic` to its end, sampling the workers' RSS every `every` seconds."""
    samples: list[dict[int, int]] = []
    traffic.start()
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (traffic.join(), done.set()), daemon=True)
    waiter.start()
    while not done.wait(every):
        samples.append({pid: rss_kib(pid) for pid in pids})
    return samples


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    latencies = [o.seconds for o in outcomes if o.status == 200]
    span = max(o.started + o.seconds for o in outcomes) - min(o.started for o in outcomes)
    return {
        "requests": len(outcomes),
        "statuses": statuses(outcomes),
        "seconds": round(span, 1),
        "requests_per_second": round(len(outcomes) / span, 1),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 2),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    repository = Path(args.repository).resolve()
    entries = [e for e in layout.scan(repository) if args.model in (None, e.name)]
    if not entries:
        raise SystemExit(f"{repository}: no version of {args.model or 'any model'} to serve (make demo-model)")
    manifest = layout.read_version(entries[-1])
    requests = bodies(manifest.name, manifest.input_dim)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seqserve-soak-") as folder:
        process, url = start_server(repository, args.workers, Path(folder) / "gunicorn.log")
        try:
            pids = workers_of(process.pid)
            warmup = (
                Traffic(
                    url,
                    lambda i: requests[i % len(requests)],
                    clients=args.clients,
                    limit=args.warmup,
                    duration=args.max_seconds,
                    prefix="warmup",
                )
                .start()
                .join()
            )
            baseline = {pid: rss_kib(pid) for pid in pids}
            left = args.max_seconds - (time.monotonic() - started)
            soak = Traffic(
                url,
                lambda i: requests[i % len(requests)],
                clients=args.clients,
                limit=args.requests,
                duration=left,
                prefix="soak",
            )
            samples = measure(soak, pids, args.sample)
            final = {pid: rss_kib(pid) for pid in pids}
            replaced = workers_of(process.pid) != pids
        finally:
            code = stop(process)
    growth = {pid: (final[pid] - baseline[pid]) / baseline[pid] for pid in pids}
    result = {
        "model": f"{manifest.name}/{manifest.version}",
        "workers": args.workers,
        "clients": args.clients,
        "warmup": summarize(warmup),
        "soak": summarize(soak.outcomes),
        "rss_kib": {
            str(pid): {
                "after_warmup": baseline[pid],
                "max": max([s[pid] for s in samples] + [final[pid]]),
                "final": final[pid],
                "growth_percent": round(100 * growth[pid], 2),
            }
            for pid in pids
        },
        "rss_samples_kib": [[s[pid] for pid in pids] for s in samples],
        "workers_replaced": replaced,
        "server_exit": code,
    }
    failures = []
    if soak.outcomes and len(soak.outcomes) < args.requests:
        failures.append(f"only {len(soak.outcomes)} of {args.requests} requests within {args.max_seconds:g} s")
    if result["soak"]["statuses"] != {"200": len(soak.outcomes)}:
        failures.append(f"not all 200: {result['soak']['statuses']}")
    if replaced:
        failures.append("a worker was replaced during the run")
    failures += [f"worker {pid}: RSS grew {100 * g:.2f} %" for pid, g in growth.items() if g >= args.max_growth]
    result["failures"] = failures
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # timeout(1) and Ctrl-C: leave through the `finally` that stops the server, not past it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    soak = result["soak"]
    print(
        f"soak: {soak['requests']} requests in {soak['seconds']} s ({soak['requests_per_second']} req/s), "
        f"{soak['statuses']}, p50 {soak['p50_ms']} ms, p99 {soak['p99_ms']} ms"
    )
    for pid, rss in result["rss_kib"].items():
        print(
            f"worker {pid}: RSS {rss['after_warmup']} KiB after warm-up -> {rss['final']} KiB "
            f"({rss['growth_percent']:+.2f} %), max {rss['max']} KiB"
        )
    print(f"figures in {args.out}")
    for failure in result["failures"]:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
