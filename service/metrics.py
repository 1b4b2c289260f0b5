"""Prometheus metrics, owned by one app. Under gunicorn every worker writes its samples into
`PROMETHEUS_MULTIPROC_DIR` (gunicorn.conf.py sets it up before any worker starts) and `/metrics` aggregates them
with prometheus-client's MultiProcessCollector; outside gunicorn the app's own registry is exposed."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.stream_requests = Counter(
            "seqserve_stream_requests_total",
            "Stream requests run: v1 state tokens and V2 sequences",
            ["model", "protocol"],
            registry=r,
        )
        self.sequences = Counter("seqserve_sequences_total", "Sequences served", ["model"], registry=r)
        self.timesteps = Counter("seqserve_timesteps_total", "Timesteps served", ["model"], registry=r)
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

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
