"""An app owns what `create_app` builds (service/app.py): its settings, log pipeline, Prometheus registry and
dataplane with the loader thread. Two apps in one process answer independently, and `close_app` stops one's
threads while the other goes on serving."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import InProcess, build_app

PREDICT = "/v1/models/{}/predict"
STEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
ONE = {"sequences": [[STEP] * 3]}
THREE = {"sequences": [[STEP] * 3] * 3}


def answered(app: InProcess, model: str) -> float:
    """Predictions this app's own registry counts as answered 200 for `model`."""
    text = app.get("/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "seqserve_requests_total"
        and s.labels == {"endpoint": "/v1/models/<name>/predict", "model": model, "status": "200"}
    )


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    return set(threading.enumerate()) - before


def test_two_apps_live_in_one_process(model_repository: Path, tmp_path: Path) -> None:
    solo = tmp_path / "solo"
    shutil.copytree(model_repository / "lstm_step", solo / "lstm_step")
    before = set(threading.enumerate())
    first = build_app(model_repository)
    first_threads = new_threads(before)
    second = build_app(solo, max_sequences=2, poll_interval=0.1)  # polling: its loader thread lives on
    second_threads = new_threads(before) - first_threads
    try:
        assert {t.name for t in second_threads} == {"model-loader", "log-writer", "metrics-flusher"}
        assert [m["name"] for m in first.get("/v1/models").json()["models"]] == ["gru_last", "lstm_step"]
        assert [m["name"] for m in second.get("/v1/models").json()["models"]] == ["lstm_step"]
        assert first.post(PREDICT.format("lstm_step"), THREE).status_code == 200
        refused = second.post(PREDICT.format("lstm_step"), THREE)
        assert refused.status_code == 422
        assert "3 sequences exceed the limit of 2" in refused.json()["error"]["message"]
        assert first.post(PREDICT.format("gru_last"), ONE).status_code == 200
        assert second.post(PREDICT.format("gru_last"), ONE).status_code == 404
        same_file = [app.post(PREDICT.format("lstm_step"), ONE).json()["predictions"] for app in (first, second)]
        assert same_file[0] == same_file[1]
        assert (answered(first, "lstm_step"), answered(first, "gru_last")) == (2, 1)
        assert (answered(second, "lstm_step"), answered(second, "gru_last")) == (1, 0)

        second.close()
        assert not [t.name for t in second_threads if t.is_alive()]
        assert second.post(PREDICT.format("lstm_step"), ONE).status_code == 503  # closed: refuses new work
        assert first.get("/ready").status_code == 200
        assert first.post(PREDICT.format("lstm_step"), THREE).status_code == 200
        assert answered(first, "lstm_step") == 3
    finally:
        second.close()
        first.close()
    assert not [t.name for t in first_threads if t.is_alive()]


def test_closing_one_app_keeps_the_others_logs(model_repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = build_app(model_repository)  # its log pipeline writes to this test's captured stderr
    try:
        build_app(model_repository).close()
        first.post(PREDICT.format("lstm_step"), ONE, headers={"X-Request-ID": "after-the-other-closed"})
    finally:
        first.close()  # flushes its log pipeline
    assert '"request_id":"after-the-other-closed"' in capsys.readouterr().err
