"""The KServe manifests are custom resources, for which kubernetes-validate has no schema. What can be checked here:
their Kubernetes parts (containers, resources, probes) strictly against Kubernetes' own schema, by validating them
as the Pod they become, and their KServe fields against the v1beta1/v1alpha1 API (field names, protocol, the
runtime <-> InferenceService link, the storage URI)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s

from tests.conftest import REPO_ROOT
from tests.deploy.tools import K8S_DIR, K8S_VERSIONS

KSERVE = K8S_DIR / "kserve"
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# serving.kserve.io/v1beta1 PredictorSpec: its implementations, its ComponentExtensionSpec, and the inline PodSpec
# fields a predictor may set.
IMPLEMENTATIONS = {"model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface"}
IMPLEMENTATIONS |= {"pmml", "lightgbm", "paddle", "storageUris", "workerSpec"}
EXTENSIONS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout"}
EXTENSIONS |= {"canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy"}
POD_FIELDS = {"containers", "volumes", "nodeSelector", "affinity", "tolerations", "serviceAccountName"}
PREDICTOR_FIELDS = IMPLEMENTATIONS | EXTENSIONS | POD_FIELDS | {"securityContext", "imagePullSecrets"}
# ModelSpec = modelFormat + runtime + PredictorExtensionSpec (these, plus an inline core/v1 Container).
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion", "storage"}
# serving.kserve.io/v1alpha1 ServingRuntimeSpec, with its inline ServingRuntimePodSpec.
RUNTIME_FIELDS = {"supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec", "replicas"}
RUNTIME_FIELDS |= {"grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "storageHelper", "builtInAdapter"}
RUNTIME_FIELDS |= {"containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels", "annotations"}
RUNTIME_FIELDS |= {"imagePullSecrets", "hostIPC"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe's rule for InferenceService names


def load(name: str) -> dict[str, Any]:
    (document,) = [d for d in yaml.safe_load_all((KSERVE / name).read_text()) if d]
    return document


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return load("servingruntime.yaml")


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    return load("inferenceservice.yaml")


def validate_as_pod(metadata: dict[str, Any], spec: dict[str, Any]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    for version in K8S_VERSIONS:
        try:
            k8s.validate(pod, version, strict=True)
        except k8s.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"Kubernetes {version}: {path}: {exc.message}")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Plain values as they are; a value from a Secret as a stand-in naming it."""
    return {e["name"]: e.get("value", f"from {e.get('valueFrom')}") for e in container.get("env", [])}


def test_serving_runtime_fields(runtime: dict[str, Any]) -> None:
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    spec = runtime["spec"]
    assert set(spec) <= RUNTIME_FIELDS, set(spec) - RUNTIME_FIELDS
    assert spec["protocolVersions"] == ["v2"]
    for model_format in spec["supportedModelFormats"]:
        assert set(model_format) <= {"name", "version", "autoSelect", "priority"}
        assert isinstance(model_format["name"], str)
        assert isinstance(model_format.get("version", ""), str)


def test_serving_runtime_container_is_a_valid_pod(runtime: dict[str, Any]) -> None:
    pod_fields = {k: v for k, v in runtime["spec"].items() if k in {"containers", "volumes", "tolerations"}}
    validate_as_pod(runtime["metadata"], pod_fields)


def test_serving_runtime_container_serves_v2_on_its_port(runtime: dict[str, Any]) -> None:
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    (port,) = [p["containerPort"] for p in container["ports"]]
    env = env_of(container)
    assert env["SEQSERVE_BIND"] == f"0.0.0.0:{port}"
    assert env["SEQSERVE_MODEL_REPOSITORY"] == "/mnt/models"  # where KServe mounts the storageUri
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}


def test_inference_service_fields(isvc: dict[str, Any], runtime: dict[str, Any]) -> None:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert DNS_1035.match(isvc["metadata"]["name"])
    assert set(isvc["spec"]) <= {"predictor", "transformer", "explainer"}
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS, set(predictor) - PREDICTOR_FIELDS
    assert 0 <= predictor.get("minReplicas", 1) <= predictor.get("maxReplicas", 1)
    model = predictor["model"]
    assert model["protocolVersion"] in PROTOCOLS
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def test_inference_service_reads_the_model_repository_pvc(isvc: dict[str, Any]) -> None:
    pvc = yaml.safe_load((REPO_ROOT / "deploy/kubernetes/pvc.yaml").read_text())
    storage = isvc["spec"]["predictor"]["model"]["storageUri"]
    assert storage == f"pvc://{pvc['metadata']['name']}"


def test_inference_service_model_container_is_a_valid_pod(isvc: dict[str, Any]) -> None:
    """ModelSpec inlines a core/v1 Container: what is not a KServe field must be a valid container field."""
    model = isvc["spec"]["predictor"]["model"]
    container = {"name": "kserve-container", **{k: v for k, v in model.items() if k not in MODEL_FIELDS}}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    validate_as_pod(isvc["metadata"], {"containers": [container]})
