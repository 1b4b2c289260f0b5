"""What one Prometheus observation costs in multiprocess mode, written straight to the shared files as
prometheus-client does, against the in-process sums of `service.metrics.Metrics` (flushed once a second).

    python -m bench.metrics_cost
"""

from __future__ import annotations

import os
import tempfile
import timeit


def measure(number: int = 20_000) -> dict[str, float]:
    """Microseconds per call, best of five runs; the multiprocess folder is a fresh temporary one."""
    folder = tempfile.mkdtemp(prefix="seqserve-metrics-cost-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before prometheus_client picks its value class
    from service.metrics import Metrics

    m = Metrics(folder)
    endpoint, model = "/v1/models/<name>/predict", "h32"
    counter = m.requests.labels(endpoint, model, "200")
    histogram = m.request_seconds.labels(endpoint, model)
    calls = {
        "counter: labels().inc()": lambda: m.requests.labels(endpoint, model, "200").inc(),
        "counter: inc() on a kept child": counter.inc,
        "histogram: labels().observe()": lambda: m.request_seconds.labels(endpoint, model).observe(0.003),
        "histogram: observe() on a kept child": lambda: histogram.observe(0.003),
        "seqserve: Metrics.inc()": lambda: m.inc(m.requests, (endpoint, model, "200")),
        "seqserve: Metrics.observe()": lambda: m.observe(m.request_seconds, (endpoint, model), 0.003),
    }
    return {name: min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6 for name, call in calls.items()}


def main() -> None:
    for name, micros in measure().items():
        print(f"{name:40s} {micros:7.2f} us")


if __name__ == "__main__":
    main()
