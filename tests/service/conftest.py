"""The service two ways: a real gunicorn serving a real exported repository on 127.0.0.1, spoken to over HTTP
(`Server`), and an app built in this process by `service.app.create_app`, spoken to through Flask's test client
(`InProcess`). Both answer `get`, `post` and `request` alike, so a test reads the same against either. What needs
no server (routing, codecs, errors, loading, the OpenAPI document) runs in process; gunicorn is kept for what
needs one (workers, gevent, keep-alive, signals, multiprocess metrics, the log stream, tritonclient)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.processes import free_port, stop
from tests.redis_server import RedisServer, start_redis

if TYPE_CHECKING:
    from flask import Flask

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=60, **kwargs)

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
        return stop(self.process, timeout=30)


def start_server(repository: Path, log: Path, wait_ready: bool = True, **settings: Any) -> Server:
    """`gunicorn --config gunicorn.conf.py service:create_app()` with SEQSERVE_* settings, on a free port, waited
    for (`/ready`, or `/health` when not `wait_ready`)."""
    settings = {"workers": 2, "threads": 8, **settings}
    server = spawn_server(repository, log, "127.0.0.1", free_port(), **settings)
    wait_for(server, "/ready" if wait_ready else "/health")
    return server


def spawn_server(repository: Path, log: Path, host: str, port: int, **settings: Any) -> Server:
    """The server process alone, not waited for: SEQSERVE_* settings on top of a clean environment (the test
    run's own SEQSERVE_* and Prometheus variables stay out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQSERVE_", "PROMETHEUS_MULTIPROC_DIR"))}
    env |= {"SEQSERVE_MODEL_REPOSITORY": str(repository), "SEQSERVE_BIND": f"{host}:{port}"}
    env |= {f"SEQSERVE_{k.upper()}": str(v) for k, v in settings.items()}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [GUNICORN, "--config", "gunicorn.conf.py", "service:create_app()"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(f"http://{host}:{port}", process, log)


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


def run_gevent_script(script: str, *args: str) -> Any:
    """Run `script` (which monkey-patches with gevent first) in a fresh interpreter from the repository root, and
    return the JSON of its last printed line. Patching this pytest process would change every other test."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default configuration (adaptive batching on), shared by the tests that do not change settings."""
    s = start_server(model_repository, tmp_path_factory.mktemp("server") / "gunicorn.log")
    yield s
    assert s.stop() == 0, s.logs()


@dataclass
class Answer:
    """A test client's response, read as a `requests.Response` is (status_code, headers, content, text, json())."""

    status_code: int
    headers: Any  # werkzeug Headers: case-insensitive, as requests' are
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return orjson.loads(self.content)


@dataclass
class InProcess:
    """An app of this process behind Flask's test client, with `Server`'s methods. Each request gets a client of
    its own, so threads can send requests at once."""

    app: Flask

    def request(self, method: str, path: str, data: bytes | None = None, **kwargs: Any) -> Answer:
        response = self.app.test_client().open(path, method=method, data=data, **kwargs)
        try:
            return Answer(response.status_code, response.headers, response.get_data())
        finally:
            response.close()  # a file answer (the docs' assets) is closed here, not by the garbage collector

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        if body is not None:
            kwargs["data"] = orjson.dumps(body)
            kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        from service.app import close_app

        close_app(self.app)


def build_app(repository: Path, wait_loaded: bool = True, **settings: Any) -> InProcess:
    """`create_app` on `repository` with these settings (keys as `Settings` fields) and the defaults for the rest:
    the test run's own SEQSERVE_* variables do not leak in. Returns after the first repository scan unless
    `wait_loaded` is false."""
    from service.app import close_app, create_app
    from service.app import wait_loaded as wait

    with pytest.MonkeyPatch.context() as env:
        for key in os.environ:
            if key.startswith(("SEQSERVE_", "PROMETHEUS_MULTIPROC_DIR")):
                env.delenv(key)
        app = create_app({"model_repository": str(repository), **settings})
    if wait_loaded and not wait(app, timeout=60):
        close_app(app)
        raise RuntimeError(f"the app did not finish scanning {repository} within 60 s")
    return InProcess(app)


@pytest.fixture(scope="session")
def app_client(model_repository: Path) -> Iterator[InProcess]:
    """The default configuration in process, shared as `server` is; closed at the end of the run."""
    client = build_app(model_repository)
    yield client
    client.close()


@pytest.fixture
def make_app() -> Iterator[Callable[..., InProcess]]:
    """`build_app` for one test: every app it built is closed when the test ends."""
    built: list[InProcess] = []

    def make(repository: Path, wait_loaded: bool = True, **settings: Any) -> InProcess:
        built.append(build_app(repository, wait_loaded, **settings))
        return built[-1]

    yield make
    for client in built:
        client.close()


@pytest.fixture(scope="session")
def expected_provider(model_repository: Path) -> str:
    """The provider onnxruntime really runs our models on here, asked as the service's `auto` asks: CUDA first
    where onnxruntime offers it (onnxruntime-gpu), then CPU. A GPU build without a usable GPU falls back to CPU;
    the session says which it chose."""
    import warnings

    import onnxruntime as ort

    wanted = [p for p in (CUDA, CPU) if p in ort.get_available_providers()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a GPU build without CUDA warns as it falls back; the answer says so
        session = ort.InferenceSession(str(model_repository / "lstm_step" / "1" / "model.onnx"), providers=wanted)
    return session.get_providers()[0]


@pytest.fixture(scope="session")
def torch_models(trained_runs: dict[str, Path]) -> dict[str, Any]:
    from models import checkpoint

    return {name: checkpoint.load(run / "checkpoint.pt").model for name, run in trained_runs.items()}


@pytest.fixture(scope="session")
def ort_sessions(model_repository: Path) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        name: ort.InferenceSession(str(model_repository / name / "1" / "model.onnx"), providers=[CPU])
        for name in ("lstm_step", "gru_last")
    }


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 for the whole run (tests/redis_server.py), stopped by PID at the end."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
