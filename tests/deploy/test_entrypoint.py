"""The serve-cpu image's own command, run outside a container: ENTRYPOINT, CMD, ENV, WORKDIR and the files COPY puts
there are read from the Dockerfile, so that this test breaks when they drift from what the service needs.

Only what cannot hold outside a container is changed: the venv stands in for /opt/venv, a temporary folder for
WORKDIR, the test repository for the volume, and the bind address becomes 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.dockerfile import Stage, parse
from tests.deploy.tools import deploy_module

IMAGE_VENV = "/opt/venv"
REQUEST = {"sequences": [[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]]}


@pytest.fixture(scope="module")
def stage() -> Stage:
    return parse(REPO_ROOT / "Dockerfile")["serve-cpu"]


def free_port() -> int:
    """A free port in 19000-19999 on 127.0.0.1 (the range this project's tests may use)."""
    for port in random.sample(range(19000, 20000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 19000-19999")


def http(method: str, url: str, body: object = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def image_environment(stage: Stage, repository: Path, port: int) -> dict[str, str]:
    """The host environment without SEQSERVE_* (nothing leaks in), then the image's ENV, then the local stand-ins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQSERVE_", "PROMETHEUS_MULTIPROC_DIR"))}
    venv_bin = sysconfig.get_path("scripts")
    for key, value in stage.env().items():
        env[key] = value.replace(f"{IMAGE_VENV}/bin", venv_bin).replace("$PATH", os.environ.get("PATH", ""))
    env["SEQSERVE_MODEL_REPOSITORY"] = str(repository)
    env["SEQSERVE_BIND"] = f"127.0.0.1:{port}"
    return env


def workdir_copy(stage: Stage, root: Path) -> Path:
    """A folder holding what the Dockerfile copies into WORKDIR (and nothing of the source tree)."""
    app = root / stage.workdir().strip("/")
    app.mkdir(parents=True)
    for source in stage.copies_into_workdir():
        shutil.copy(REPO_ROOT / source, app / Path(source).name)
    return app


def test_image_wiring(stage: Stage) -> None:
    """What the local run below relies on, stated once: bind, port, volume, user, entrypoint."""
    env = stage.env()
    assert env["SEQSERVE_BIND"] == "0.0.0.0:8000", "containers must listen on every interface"
    assert stage.all("EXPOSE") == ["8000"]
    assert json.loads(stage.last("VOLUME") or "[]") == [env["SEQSERVE_MODEL_REPOSITORY"]]
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert (stage.last("USER") or "0").split(":")[0] not in ("0", "root")
    assert stage.exec_form("ENTRYPOINT")[:3] == ["gunicorn", "--config", "gunicorn.conf.py"]
    assert "gunicorn.conf.py" in stage.copies_into_workdir()


@pytest.mark.slow
def test_image_command_serves_and_stops_cleanly(stage: Stage, model_repository: Path, tmp_path: Path) -> None:
    port = free_port()
    env = image_environment(stage, model_repository, port)
    app = workdir_copy(stage, tmp_path)
    argv = stage.exec_form("ENTRYPOINT") + stage.exec_form("CMD")
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable, f"{argv[0]} is not on the image's PATH"
    assert Path(executable).parent == Path(sysconfig.get_path("scripts")), executable
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen([executable, *argv[1:]], cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        status, body = wait_ready(base, process, log, timeout=120)
        assert status == 200, f"/ready answered {status}: {body!r}\n{log.read_text()}"
        assert http("GET", base + "/health")[0] == 200

        status, body = http("POST", base + "/v1/models/lstm_step/predict", REQUEST, timeout=30)
        assert status == 200, body
        answer = json.loads(body)
        assert answer["model_name"] == "lstm_step"
        assert len(answer["predictions"]) == 1
        assert len(answer["predictions"][0]["labels"]) == 2  # per-timestep head: one label per step

        _, check = stage.healthcheck()
        check = [arg.replace(stage.workdir(), str(app)) for arg in check]
        check[0] = shutil.which(check[0], path=env["PATH"]) or check[0]
        health = subprocess.run(check, cwd=app, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert health.returncode == 0, health.stderr

        process.send_signal(signal.SIGTERM)  # what `docker stop` sends PID 1
        assert process.wait(timeout=60) == 0, log.read_text()
        assert "Shutting down: Master" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode} before it was ready:\n{log.read_text()}")
        try:
            status, body = http("GET", base + "/ready", timeout=5)
        except OSError:
            status, body = 0, b""
        if status == 200:
            break
        time.sleep(0.5)
    return status, body


def test_healthcheck_reads_the_bind_address() -> None:
    probe_url = deploy_module("healthcheck").probe_url
    assert probe_url("0.0.0.0:8000", "/ready") == "http://127.0.0.1:8000/ready"
    assert probe_url("127.0.0.1:19001,[::]:19002", "/ready") == "http://127.0.0.1:19001/ready"
    assert probe_url("[::]:8080", "/ready") == "http://127.0.0.1:8080/ready"
    assert probe_url("[::1]:8080", "/health") == "http://[::1]:8080/health"
    with pytest.raises(ValueError, match="TCP"):
        probe_url("unix:/tmp/seqserve.sock", "/ready")
