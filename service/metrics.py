"""Prometheus metrics. Under gunicorn every worker writes to `PROMETHEUS_MULTIPROC_DIR` (gunicorn.conf.py sets it
up before any worker starts) and `/metrics` aggregates them with prometheus-client's MultiProcessCollector."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter("seqserve_requests_total", "HTTP requests", ["endpoint", "model", "status"])
REQUEST_SECONDS = Histogram(
    "seqserve_request_duration_seconds", "Whole request time", ["endpoint", "model"], buckets=LATENCY_BUCKETS
)
QUEUE_SECONDS = Histogram(
    "seqserve_queue_duration_seconds", "Time a request waited for the model", ["model"], buckets=LATENCY_BUCKETS
)
COMPUTE_SECONDS = Histogram(
    "seqserve_compute_duration_seconds", "onnxruntime time per run", ["model"], buckets=LATENCY_BUCKETS
)
BATCH_SEQUENCES = Histogram(
    "seqserve_batch_size_sequences", "Sequences per onnxruntime run", ["model"], buckets=BATCH_BUCKETS
)
SEQUENCES = Counter("seqserve_sequences_total", "Sequences served", ["model"])
TIMESTEPS = Counter("seqserve_timesteps_total", "Timesteps served", ["model"])
REJECTED = Counter("seqserve_queue_rejections_total", "Requests refused because the queue was full", ["model"])
MODEL_READY = Gauge(
    "seqserve_model_ready",
    "1 when the model version is loaded and warm in this worker",
    ["model", "version", "provider"],
    multiprocess_mode="livemax",
)


def exposition() -> tuple[bytes, str]:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
