"""Closed-loop load for deploy/gpu-check.sh: PROCS processes x THREADS keep-alive clients POST one JSON body of
SEQUENCES x TIMESTEPS x 6 features for SECONDS; prints one JSON line. The load loop is the benchmark's
(`bench.loadgen.closed_loop`), run in several processes so that the client is not what limits a GPU server.

    PYTHONPATH=. python deploy/gpu_load.py PORT PATH PROCS THREADS SECONDS SEQUENCES TIMESTEPS
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import sys

from bench.loadgen import closed_loop, summarize

HEADERS = {"Content-Type": "application/json"}


def client(url: str, body: bytes, threads: int, seconds: float, results: mp.Queue) -> None:
    results.put(closed_loop(url, body, HEADERS, threads, seconds, timeout=60))


def main(argv: list[str]) -> None:
    port, path = int(argv[0]), argv[1]
    procs, threads, seconds, sequences, steps = int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5]), int(argv[6])
    rng = random.Random(0)
    payload = [[[round(rng.gauss(0, 1), 4) for _ in range(6)] for _ in range(steps)] for _ in range(sequences)]
    body = json.dumps({"sequences": payload}).encode()
    url = f"http://127.0.0.1:{port}{path}"
    results: mp.Queue = mp.Queue()
    workers = [mp.Process(target=client, args=(url, body, threads, seconds, results)) for _ in range(procs)]
    for p in workers:
        p.start()
    outcomes = [results.get() for _ in workers]
    for p in workers:
        p.join()
    latencies = [x for lat, _, _ in outcomes for x in lat]
    elapsed = max(e for _, _, e in outcomes)
    result = summarize(latencies, sum(e for _, e, _ in outcomes), elapsed)
    print(
        json.dumps(
            {
                "clients": procs * threads,
                "seqs": sequences,
                "steps": steps,
                "req_s": round(result.rps, 1),
                "seq_s": round(result.rps * sequences),
                "p50_ms": round(result.p50_ms, 2),
                "p99_ms": round(result.p99_ms, 2),
                "errors": result.errors,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
