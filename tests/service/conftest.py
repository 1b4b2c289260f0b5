"""A real gunicorn serving a real exported repository on 127.0.0.1, spoken to over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.redis_server import RedisServer, start_redis

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["data"] = orjson.dumps(body)
            kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        return self.session.post(self.url + path, timeout=60, **kwargs)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.session.close()  # idle keep-alive connections would hold a graceful stop for the keep-alive timeout
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(repository: Path, log: Path, wait_ready: bool = True, **settings: Any) -> Server:
    """`gunicorn --config gunicorn.conf.py service:create_app()` with SEQSERVE_* settings, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQSERVE_", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update(
        {
            "SEQSERVE_MODEL_REPOSITORY": str(repository),
            "SEQSERVE_BIND": f"127.0.0.1:{port}",
            "SEQSERVE_WORKERS": "2",
            "SEQSERVE_THREADS": "8",
        }
    )
    env.update({f"SEQSERVE_{k.upper()}": str(v) for k, v in settings.items()})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [GUNICORN, "--config", "gunicorn.conf.py", "service:create_app()"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    wait_for(server, "/ready" if wait_ready else "/health")
    return server


def wait_for(server: Server, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.process.returncode}:\n{server.logs()}")
        try:
            if server.get(path).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{path} not 200 within {timeout}s:\n{server.logs()}")


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default configuration (adaptive batching on), shared by the tests that do not change settings."""
    s = start_server(model_repository, tmp_path_factory.mktemp("server") / "gunicorn.log")
    yield s
    assert s.stop() == 0, s.logs()


@pytest.fixture(scope="session")
def torch_models(trained_runs: dict[str, Path]) -> dict[str, Any]:
    from models import checkpoint

    return {name: checkpoint.load(run / "checkpoint.pt").model for name, run in trained_runs.items()}


@pytest.fixture(scope="session")
def ort_sessions(model_repository: Path) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        name: ort.InferenceSession(
            str(model_repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        for name in ("lstm_step", "gru_last")
    }


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 for the whole run (tests/redis_server.py), stopped by PID at the end."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
