"""Closed-loop load for deploy/gpu-check.sh: PROCS processes x THREADS keep-alive clients POST one JSON body of
SEQUENCES x TIMESTEPS x 6 features for SECONDS; prints one JSON line.

    python deploy/gpu_load.py PORT PATH PROCS THREADS SECONDS SEQUENCES TIMESTEPS
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import random
import sys
import threading
import time


def client(port: int, path: str, body: bytes, threads: int, seconds: float, results: mp.Queue) -> None:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put((latencies, errors[0]))


def main(argv: list[str]) -> None:
    port, path = int(argv[0]), argv[1]
    procs, threads, seconds, sequences, steps = int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5]), int(argv[6])
    rng = random.Random(0)
    payload = [[[round(rng.gauss(0, 1), 4) for _ in range(6)] for _ in range(steps)] for _ in range(sequences)]
    body = json.dumps({"sequences": payload}).encode()
    results: mp.Queue = mp.Queue()
    workers = [mp.Process(target=client, args=(port, path, body, threads, seconds, results)) for _ in range(procs)]
    started = time.monotonic()
    for p in workers:
        p.start()
    outcomes = [results.get() for _ in workers]
    for p in workers:
        p.join()
    elapsed = time.monotonic() - started
    latencies = sorted(x for lat, _ in outcomes for x in lat)
    n = len(latencies)
    print(
        json.dumps(
            {
                "clients": procs * threads,
                "seqs": sequences,
                "steps": steps,
                "req_s": round(n / elapsed, 1),
                "seq_s": round(n * sequences / elapsed),
                "p50_ms": round(1000 * latencies[n // 2], 2) if n else None,
                "p99_ms": round(1000 * latencies[int(n * 0.99)], 2) if n else None,
                "errors": sum(e for _, e in outcomes),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
