"""Model loading: readiness only when warm, honest providers, failures that stay local, new versions without
downtime, and a broken onnxruntime install detected at start.

What one dataplane decides (states, reasons, readiness, polling) is checked on apps built in this process
(`make_app`); gunicorn is kept for what needs the server: a worker that answers /health while it loads (the
loader is a greenlet under gevent), readiness across workers, and SIGHUP reloads."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.runtime import install_problems
from service.settings import Settings
from tests.service.conftest import CPU, CUDA, start_server

ONE = {"sequences": [[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]] * 3]}


def settled(server, timeout: float = 60) -> dict:
    """The /ready report once the first repository scan is over (every version loaded or failed)."""
    deadline = time.monotonic() + timeout
    while True:
        report = server.get("/ready").json()
        loading = [v for versions in report["models"].values() for v in versions if v["state"] == "loading"]
        if "model repository not scanned yet" not in report["problems"] and not loading:
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.1)


@contextlib.contextmanager
def steady_traffic(server) -> Iterator[list[int]]:
    """Predictions one after another in a thread while the block runs; yields their status codes."""
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(server.post("/v1/models/lstm_step/predict", ONE).status_code)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join()


def copy_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_ready_is_503_until_models_are_warm(model_repository, tmp_path):
    # A long warm-up batch makes the loading window wide enough to observe.
    server = start_server(model_repository, tmp_path / "log", wait_ready=False, warmup_timesteps=30_000)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = server.get("/ready")
            seen.append((response.status_code, response.json()))
            if response.status_code == 200:
                break
            time.sleep(0.05)
        assert seen[0][0] == 503
        assert seen[-1][0] == 200
        not_ready = seen[0][1]
        assert not_ready["ready"] is False
        states = {v["state"] for versions in not_ready["models"].values() for v in versions}
        assert "loading" in states or "model repository not scanned yet" in not_ready["problems"]
        assert server.get("/health").status_code == 200  # alive all along
    finally:
        assert server.stop() == 0


def test_cuda_fallback_is_reported_and_can_make_the_service_not_ready(
    make_app, model_repository, expected_provider, caplog
):
    """Asked for CUDA, onnxruntime falls back to CPU where it cannot run CUDA: the service reports the provider it
    really got and logs the fallback, and with `require_gpu` it is not ready. Where CUDA works (onnxruntime-gpu
    on a GPU) the same settings get CUDA, nothing falls back, and the service is ready."""
    fallback = f"asked for {CUDA}, onnxruntime runs it on {CPU}"
    lenient = make_app(model_repository, provider="cuda")
    version = lenient.get("/v1/models/lstm_step").json()["versions"][0]
    assert version["provider"] == expected_provider  # what onnxruntime really uses, not what we asked
    strict = make_app(model_repository, provider="cuda", require_gpu="true")
    report = settled(strict)
    if expected_provider == CUDA:
        assert fallback not in caplog.text
        assert strict.get("/ready").status_code == 200
        assert strict.post("/v1/models/lstm_step/predict", ONE).status_code == 200
        return
    assert fallback in caplog.text
    assert strict.get("/ready").status_code == 503
    reasons = [v["reason"] for versions in report["models"].values() for v in versions]
    assert reasons
    assert all(f"GPU required but onnxruntime runs it on {CPU}" in r for r in reasons)
    refused = strict.post("/v1/models/lstm_step/predict", ONE)
    assert refused.status_code == 503
    assert "GPU required" in refused.json()["error"]["message"]


def test_a_model_that_fails_to_load_does_not_take_the_others_down(make_app, model_repository, tmp_path):
    repo = copy_repository(model_repository, tmp_path / "repo")
    onnx_file = repo / "gru_last" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10] + b"corrupted!")
    app = make_app(repo)
    report = settled(app)
    # Not ready even under the default (lenient) readiness: gru_last has no ready version at all.
    assert app.get("/ready").status_code == 503
    assert "model 'gru_last' has no ready version" in report["problems"]
    assert report["models"]["gru_last"][0]["state"] == "failed"
    assert report["models"]["lstm_step"][0]["state"] == "ready"
    assert "does not match the manifest" in report["models"]["gru_last"][0]["reason"]
    assert app.post("/v1/models/lstm_step/predict", ONE).status_code == 200
    broken = app.post("/v1/models/gru_last/predict", ONE)
    assert broken.status_code == 503
    assert "failed" in broken.json()["error"]["message"]


def test_new_versions_appear_without_downtime(make_app, model_repository, trained_runs, tmp_path):
    from export.pipeline import export_run

    repo = copy_repository(model_repository, tmp_path / "repo")
    app = make_app(repo, poll_interval=0.2)
    with steady_traffic(app) as statuses:
        version, _ = export_run(trained_runs["lstm_step"], repo, "lstm_step")
        assert version == 2
        deadline = time.monotonic() + 30
        while app.post("/v1/models/lstm_step/predict", ONE).json()["model_version"] != "2":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shutil.rmtree(repo / "lstm_step" / "1")
        while [v["version"] for v in app.get("/v1/models/lstm_step").json()["versions"]] != [2]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert app.post("/v1/models/lstm_step/versions/1/predict", ONE).status_code == 404
    assert len(statuses) > 5
    assert set(statuses) == {200}


def test_empty_or_missing_repository_is_not_ready(make_app, tmp_path):
    (tmp_path / "empty").mkdir()
    for repo, problem in ((tmp_path / "empty", "holds no model versions"), (tmp_path / "absent", "does not exist")):
        app = make_app(repo)
        report = settled(app)
        assert app.get("/ready").status_code == 503
        assert problem in report["problems"][0]


def test_broken_onnxruntime_install_is_detected():
    import onnxruntime

    both = install_problems({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    assert len(both) == 1
    assert "onnxruntime-gpu==1.31.1" in both[0]
    assert "share the module" in both[0]
    assert install_problems({"onnxruntime": None, "onnxruntime-gpu": onnxruntime.__version__}) == []
    mismatch = install_problems({"onnxruntime": None, "onnxruntime-gpu": "0.1.0"})
    assert "module reports" in mismatch[0]
    assert install_problems({"onnxruntime": None, "onnxruntime-gpu": None})
    assert install_problems() == []  # this environment is healthy


def test_settings_come_from_the_prefixed_environment():
    settings = Settings.from_mapping(
        {
            "MODEL_REPOSITORY": "/models",
            "BATCHING": "false",
            "MAX_SEQUENCES": "12",
            "BATCH_MAX_QUEUE_DELAY_MS": "2.5",
            "REQUIRE_GPU": True,
        }
    )
    assert settings.model_repository == "/models"
    assert settings.batching is False
    assert settings.max_sequences == 12
    assert settings.batch_max_queue_delay_ms == 2.5
    assert settings.require_gpu is True
    with pytest.raises(ValueError, match="SEQSERVE_MAX_SEQUENCSE"):
        Settings.from_mapping({"MAX_SEQUENCSE": "3"})
    with pytest.raises(ValueError, match="SEQSERVE_BATCHING: cannot read 'maybe' as bool"):
        Settings.from_mapping({"BATCHING": "maybe"})
    with pytest.raises(ValueError, match="SEQSERVE_PROVIDER"):
        Settings.from_mapping({"PROVIDER": "tpu"})


def test_sighup_reload_serves_new_versions_without_failed_requests(model_repository, trained_runs, tmp_path):
    """SIGHUP replaces the workers; the new ones load their models before they take a request."""
    from export.pipeline import export_run

    repo = copy_repository(model_repository, tmp_path / "repo")
    server = start_server(repo, tmp_path / "log", workers=2)
    try:
        with steady_traffic(server) as statuses:
            assert export_run(trained_runs["lstm_step"], repo, "lstm_step")[0] == 2
            time.sleep(0.5)
            assert server.post("/v1/models/lstm_step/predict", ONE).json()["model_version"] == "1"  # no polling
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while server.post("/v1/models/lstm_step/predict", ONE).json()["model_version"] != "2":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(1.0)  # the old workers are gone by now; traffic went on throughout
    finally:
        assert server.stop() == 0
    assert len(statuses) > 10
    assert set(statuses) == {200}


def test_a_broken_new_version_is_reported_but_keeps_the_service_ready(make_app, model_repository, tmp_path):
    repo = copy_repository(model_repository, tmp_path / "repo")
    shutil.copytree(repo / "lstm_step" / "1", repo / "lstm_step" / "2")  # manifest says version 1: refused
    lenient = make_app(repo)
    report = settled(lenient)
    assert lenient.get("/ready").status_code == 200
    states = {v["version"]: v for v in report["models"]["lstm_step"]}
    assert states[1]["state"] == "ready"
    assert states[2]["state"] == "failed"
    assert "manifest says lstm_step/1" in states[2]["reason"]
    assert lenient.post("/v1/models/lstm_step/predict", ONE).json()["model_version"] == "1"
    strict = make_app(repo, strict_readiness="true")
    report = settled(strict)
    assert strict.get("/ready").status_code == 503
    assert "model 'lstm_step': not every version is ready (strict readiness)" in report["problems"]


def test_ready_means_every_worker_is_ready(model_repository, tmp_path):
    """/ready reaches one worker; it must not say 200 while another worker still loads."""
    server = start_server(model_repository, tmp_path / "log", wait_ready=False, workers=2, warmup_timesteps=20_000)
    try:
        deadline = time.monotonic() + 120
        while (ready := server.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready.json()["workers"] == {"ready": 2, "expected": 2}
        statuses = [server.post("/v1/models/gru_last/predict", ONE).status_code for _ in range(30)]
        assert statuses == [200] * 30
    finally:
        assert server.stop() == 0
