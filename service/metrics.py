"""Prometheus metrics, owned by one app, aggregated in the process and written out once a second.

Under gunicorn every worker's samples live in `PROMETHEUS_MULTIPROC_DIR` (gunicorn.conf.py sets it up before any
worker starts) and `/metrics` aggregates them with prometheus-client's MultiProcessCollector; outside gunicorn the
app's own registry is exposed. A multiprocess sample is a locked write into a memory-mapped file, about 10 µs per
counter increment and 13 µs per histogram observation (bench/metrics_cost.py), several per request. So requests
only add to in-process sums (`inc`, `observe`: a dict update under a lock), and a flusher thread writes the sums
into the real metrics once a second, before each exposition and when the app closes.

What is kept: requests (count and latency by endpoint, model and status), queue and compute time, batch size
(stateful: a run of streams), timesteps served, stream requests, and which versions are loaded.
"""

from __future__ import annotations

import bisect
import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FLUSH_SECONDS = 1.0

Labels = tuple[str, ...]


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = r = CollectorRegistry()
        self.requests = Counter("seqserve_requests_total", "HTTP requests", ["endpoint", "model", "status"], registry=r)
        self.request_seconds = Histogram(
            "seqserve_request_duration_seconds",
            "Whole request time",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "seqserve_queue_duration_seconds",
            "Time a request waited for the model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "seqserve_compute_duration_seconds",
            "onnxruntime time per run",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_sequences = Histogram(
            "seqserve_batch_size_sequences",
            "Sequences per onnxruntime run; stateful: the run carried state inputs (streams)",
            ["model", "stateful"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.timesteps = Counter("seqserve_timesteps_total", "Timesteps served", ["model"], registry=r)
        self.stream_requests = Counter(
            "seqserve_stream_requests_total",
            "Stream requests run: v1 state tokens and V2 sequences",
            ["model", "protocol"],
            registry=r,
        )
        self.rejected = Counter(
            "seqserve_queue_rejections_total", "Requests refused because the queue was full", ["model"], registry=r
        )
        self.model_ready = Gauge(
            "seqserve_model_ready",
            "1 when the model version is loaded and warm in this worker",
            ["model", "version", "provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self._lock = threading.Lock()
        self._counts: dict[tuple[Counter, Labels], float] = {}
        self._observed: dict[tuple[Histogram, Labels], list] = {}  # [bucket counts, sum]
        self._bounds = {
            id(h): [*map(float, buckets), float("inf")]
            for h, buckets in (
                (self.request_seconds, LATENCY_BUCKETS),
                (self.queue_seconds, LATENCY_BUCKETS),
                (self.compute_seconds, LATENCY_BUCKETS),
                (self.batch_sequences, BATCH_BUCKETS),
            )
        }
        self._flush_seconds = flush_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="metrics-flusher", daemon=True)

    # ------------------------------------------------------------------------------------------ recording

    def inc(self, counter: Counter, labels: Labels, amount: float = 1.0) -> None:
        key = (counter, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount

    def observe(self, histogram: Histogram, labels: Labels, value: float) -> None:
        bounds = self._bounds[id(histogram)]
        key = (histogram, labels)
        with self._lock:
            entry = self._observed.get(key)
            if entry is None:
                entry = self._observed[key] = [[0] * len(bounds), 0.0]
            entry[0][bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
            entry[1] += value

    # -------------------------------------------------------------------------------------------- writing

    def flush(self) -> None:
        """Write what was recorded since the last flush into the real metrics (the multiprocess files)."""
        with self._lock:
            counts, self._counts = self._counts, {}
            observed, self._observed = self._observed, {}
        for (counter, labels), amount in counts.items():
            counter.labels(*labels).inc(amount)
        for (histogram, labels), (buckets, total) in observed.items():
            child = histogram.labels(*labels)
            for value, n in zip(child._buckets, buckets, strict=True):  # prometheus-client's own bucket values
                if n:
                    value.inc(n)
            child._sum.inc(total)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()

    def exposition(self) -> tuple[bytes, str]:
        self.flush()
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _flusher(self) -> None:
        while not self._stopping.wait(self._flush_seconds):
            self.flush()
