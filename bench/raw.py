"""The limit: onnxruntime's `session.run` in-process on the same batches, no HTTP, no parsing, no encoding.

It gets the CPU the servers get in total: `streams` threads (one per server worker process), each with its own
session of `intra_op_threads` threads, calling `run` back to back for `duration` seconds. onnxruntime releases
the GIL inside `run`, so the threads behave like the worker processes. The result's CPU is this process's, over
the measurement (the sessions' warm-up run excluded).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from bench.apps.onnx_model import SequenceSession
from bench.fixtures import ExportedModel
from bench.loadgen import LoadResult, summarize


def measure(
    model: ExportedModel, features: np.ndarray, streams: int, intra_op_threads: int, duration: float
) -> LoadResult:
    runners = [SequenceSession(model.onnx, intra_op_threads) for _ in range(streams)]
    for runner in runners:
        runner.probabilities(features)  # first-run allocations are not part of the limit
    latencies: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + duration

    def loop(runner: SequenceSession, out: list[float]) -> None:
        while (start := time.perf_counter()) < deadline:
            runner.probabilities(features)
            out.append(time.perf_counter() - start)

    started, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=loop, args=(r, out)) for r, out in zip(runners, latencies, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = summarize([x for out in latencies for x in out], 0, time.perf_counter() - started)
    return dataclasses.replace(result, cpu_s=time.process_time() - cpu)
