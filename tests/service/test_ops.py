"""Health and readiness through gunicorn (the workers' board), metrics through gunicorn (multiprocess files) and in
process (the app's own registry); the OpenAPI document and its docs page against the app in process."""

from __future__ import annotations

import time

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families


def test_health_and_ready(server, expected_provider):
    assert server.get("/health").json() == {"status": "alive"}
    ready = server.get("/ready")
    assert ready.status_code == 200
    report = ready.json()
    assert report["ready"] is True
    assert report["problems"] == []
    assert report["models"]["lstm_step"][0] == {
        "version": 1,
        "state": "ready",
        "reason": None,
        "provider": expected_provider,
    }
    assert server.get("/v2/health/live").status_code == 200
    assert server.get("/v2/health/ready").json() == {"ready": True}


def samples(server) -> dict[tuple[str, frozenset], float]:
    text = server.get("/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize("target", ["server", "app_client"])  # multiprocess files, or the app's own registry
def test_metrics_count_requests_sequences_and_batches(request, target, expected_provider):
    server = request.getfixturevalue(target)
    before = samples(server)
    sequences = [[[0.5] * 6] * 4, [[0.1] * 6] * 9]
    for _ in range(3):
        assert server.post("/v1/models/lstm_step/predict", {"sequences": sequences}).status_code == 200
    assert server.post("/v1/models/lstm_step/predict", {"sequences": []}).status_code == 422
    endpoint = "/v1/models/<name>/predict"
    # Workers write their sums out once a second (service/metrics.py): the other worker's may be a moment late.
    expected = {
        ("seqserve_requests_total", (("endpoint", endpoint), ("model", "lstm_step"), ("status", "200"))): 3,
        ("seqserve_requests_total", (("endpoint", endpoint), ("model", "lstm_step"), ("status", "422"))): 1,
        ("seqserve_timesteps_total", (("model", "lstm_step"),)): 3 * 13,
        ("seqserve_request_duration_seconds_count", (("endpoint", endpoint), ("model", "lstm_step"))): 4,
        ("seqserve_queue_duration_seconds_count", (("model", "lstm_step"),)): 3,
        ("seqserve_batch_size_sequences_sum", (("model", "lstm_step"), ("stateful", "false"))): 6,
    }

    def delta(after: dict, name: str, labels: tuple) -> float:
        key = (name, frozenset(labels))
        return after.get(key, 0.0) - before.get(key, 0.0)

    deadline = time.monotonic() + 10
    while True:
        after = samples(server)
        got = {key: delta(after, *key) for key in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expected
    assert delta(after, "seqserve_compute_duration_seconds_count", (("model", "lstm_step"),)) >= 1
    ready = {k: v for k, v in after.items() if k[0] == "seqserve_model_ready"}
    labels = {"model": "lstm_step", "version": "1", "provider": expected_provider}
    assert ready[("seqserve_model_ready", frozenset(labels.items()))] == 1


def test_openapi_document_is_valid(app_client):
    spec = app_client.get("/openapi.json").json()
    validate(spec)
    assert "/v1/models/{name}/predict" in spec["paths"]
    assert "/v2/models/{name}/infer" in spec["paths"]
    predict = spec["components"]["schemas"]["PredictRequest"]
    assert predict["required"] == ["sequences"]


def test_docs_page_serves_its_own_assets(app_client):
    page = app_client.get("/docs")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        response = app_client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 10_000
    assert "cdn" not in page.text.lower()
