"""Shared by the reliability scenarios: real gunicorn servers (tests/service/conftest.py's `start_server`) on real
exported models, traffic that records every outcome (bench/traffic.py), and the facts read from /proc.

`versions_repository` holds `lstm_step` at version 1 (the shared model) and version 2 (the same architecture,
trained with another seed, so the two answer the same input differently: a response can be traced to the version
that computed it). Tests copy from it what they serve, and publish version 2 into their own repository as the
exporter would (a hidden folder renamed into place).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pytest

from bench.traffic import Outcome, Request
from tests.conftest import SHARED_MODELS, train
from tests.service.conftest import Server, spawn_server, start_server, wait_for

__all__ = ["Server", "start_server", "wait_for"]
T = TypeVar("T")
TOKEN = "reliability-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = np.random.default_rng(3).normal(size=(2, 12, 6)).astype(np.float32)
PREDICT = Request(
    "POST",
    "/v1/models/lstm_step/predict",
    orjson.dumps({"sequences": FEATURES, "outputs": ["probabilities"]}, option=orjson.OPT_SERIALIZE_NUMPY),
    {"Content-Type": "application/json"},
)

# Heavier: 8 sequences of 500 steps in a raw float32 body, labels only back; a run takes tens of milliseconds.
SLOW_FEATURES = np.random.default_rng(4).normal(size=(8, 500, 6)).astype(np.float32)
SLOW = Request(
    "POST",
    "/v1/models/lstm_step/predict?outputs=labels",
    SLOW_FEATURES.tobytes(),
    {"Content-Type": "application/octet-stream", "Seqserve-Shape": "8,500,6"},
)


@pytest.fixture(scope="session")
def versions_repository(tmp_path_factory: pytest.TempPathFactory, model_repository: Path, separable_csv: Path) -> Path:
    from export.pipeline import export_run

    root = tmp_path_factory.mktemp("versions")
    repository = root / "repository"
    shutil.copytree(model_repository / "lstm_step", repository / "lstm_step")
    train(separable_csv, root / "run", epochs=1, seed=7, **SHARED_MODELS["lstm_step"])
    assert export_run(root / "run", repository, "lstm_step")[0] == 2
    return repository


@pytest.fixture(scope="session")
def reference(versions_repository: Path) -> dict[str, np.ndarray]:
    """version -> the probabilities onnxruntime gives for FEATURES, run in-process."""
    import onnxruntime as ort

    answers = {}
    for version in ("1", "2"):
        session = ort.InferenceSession(
            str(versions_repository / "lstm_step" / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        state = np.zeros((1, len(FEATURES), 16), dtype=np.float32)  # h0, c0: [layers, batch, hidden], from zero
        feeds = {"features": FEATURES, "lengths": np.array([12, 12]), "h0": state, "c0": state}
        answers[version] = session.run(["probabilities"], feeds)[0]
    assert not np.allclose(answers["1"], answers["2"], atol=1e-3)  # tellable apart
    return answers


def spawn_replica(repository: Path, log: Path, host: str, port: int, **settings: Any) -> Server:
    """A server like `start_server`'s on another loopback address, not waited for (replicas start side by side)."""
    return spawn_server(repository, log, host, port, **{"workers": 1, **settings})


def serving_repository(versions_repository: Path, target: Path, versions: tuple[int, ...] = (1,)) -> Path:
    for version in versions:
        shutil.copytree(versions_repository / "lstm_step" / str(version), target / "lstm_step" / str(version))
    return target


def publish(versions_repository: Path, repository: Path, version: int) -> Path:
    """Put a version into a served repository in one rename, as `layout.publish` does."""
    staging = repository / "lstm_step" / f".tmp-{version}"
    shutil.copytree(versions_repository / "lstm_step" / str(version), staging)
    target = repository / "lstm_step" / str(version)
    staging.rename(target)
    return target


def answered_version(outcome: Outcome, reference: dict[str, np.ndarray]) -> str:
    """The version a 200 says it came from, after checking that its numbers are that version's own."""
    body = orjson.loads(outcome.body)
    version = body["model_version"]
    got = np.array([p["probabilities"] for p in body["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(got, reference[version], atol=1e-5, err_msg=f"{outcome.request_id} mixed versions")
    return version


def worker_pids(server: Server) -> list[int]:
    """The gunicorn workers: the master's children, from /proc."""
    master = server.process.pid
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children.append(int(entry.name))
    return sorted(children)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def logged_requests(logs: str, prefix: str) -> dict[str, dict]:
    """request id -> its access log entry (status, duration_ms: the app's own time), for the requests the app
    answered whose id starts with `prefix`."""
    found = {}
    for line in logs.splitlines():
        if line.startswith("{") and '"seqserve.access"' in line:
            entry = orjson.loads(line)
            if str(entry.get("request_id", "")).startswith(prefix):
                found[entry["request_id"]] = entry
    return found


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Poll `check()` until it returns something truthy; that value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(interval)
    return value
