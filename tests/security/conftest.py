"""A hostile repository served by a real gunicorn: the shared models, plus versions an attacker or an accident could
leave there, each of which must be refused before onnxruntime sees it:

- `tampered`: lstm_step's files with one byte of model.onnx changed where onnxruntime does not care (the producer
  name), so the file still loads: only the sha256 check can refuse it;
- `escape`: a manifest whose ONNX file is `../../outside.onnx`, a copy of a good model next to the repository,
  listed with its true sha256: only the file-name check can refuse it.

A folder `outside_model/1` next to the repository holds a good model that no request may reach.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrepo.manifest import sha256
from tests.service.conftest import Server, start_server

GOOD = "lstm_step"


def _copy_version(source: Path, target: Path, name: str) -> Path:
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _tamper(version: Path) -> None:
    onnx = version / "model.onnx"
    data = onnx.read_bytes()
    assert b"pytorch" in data[:64], "the ONNX producer name moved; pick another harmless byte"
    onnx.write_bytes(data.replace(b"pytorch", b"pYtorch", 1))


def _escape(version: Path, outside: Path) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    name = "../../" + outside.name
    manifest["onnx"]["file"] = name
    manifest["files"][name] = {"sha256": sha256(outside), "bytes": outside.stat().st_size}
    (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def hostile_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    repository = root / "repository"
    shutil.copytree(model_repository, repository)
    _tamper(_copy_version(model_repository / GOOD / "1", repository / "tampered" / "1", "tampered"))
    outside = root / "outside.onnx"
    shutil.copy(model_repository / GOOD / "1" / "model.onnx", outside)
    _escape(_copy_version(model_repository / GOOD / "1", repository / "escape" / "1", "escape"), outside)
    _copy_version(model_repository / GOOD / "1", root / "outside_model" / "1", "outside_model")
    return repository


def wait_settled(server: Server, timeout: float = 60.0) -> None:
    """Until no version is loading (the repository holds failed versions: /ready stays 503)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = server.get("/ready").json()["models"]
        if models and all(v["state"] != "loading" for versions in models.values() for v in versions):
            return
        time.sleep(0.2)
    raise RuntimeError(f"versions still loading after {timeout}s:\n{server.logs()}")


@pytest.fixture(scope="session")
def hostile(hostile_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker (every answer from the same dataplane), small limits for the size tests."""
    log = tmp_path_factory.mktemp("hostile-server") / "gunicorn.log"
    server = start_server(hostile_repository, log, wait_ready=False, workers=1, max_body_bytes=200_000)
    wait_settled(server)
    yield server
    assert server.stop() == 0, server.logs()[-5000:]
