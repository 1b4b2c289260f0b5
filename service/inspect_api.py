"""`POST /v1/models/<name>[/versions/<v>]/inspect`: gates, states and memory per timestep of one sequence, from the
served version itself (service/inspection.py does the numbers; this module ties them to the app).

Each loaded version gets one `Inspector`, built on its first inspection and kept by the app's `Inspectors`, keyed
weakly by the `LoadedModel`: a version that is unloaded takes its inspector with it, a reloaded one builds a fresh
one. Building reads the version's ONNX file once, after checking its sha256 against the manifest (the weights read
must be those onnxruntime serves), and the inspector runs its occlusion batch through the version's own
onnxruntime session. Both are CPU-bound, so they run through `offload`, as every onnxruntime call does. The body is
validated before anything is built or run (`inspect_schema`: one sequence, errors located `sequence[t][f]`, the
length limit `SEQSERVE_INSPECT_MAX_TIMESTEPS`, by default the inspector's own per head). A numpy/onnxruntime
disagreement or a graph the inspector cannot read is logged and answered 500 (`InspectionFailed`): never a picture
of something other than the served model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from flask import Blueprint, Flask, Response, current_app, g, request

from modelrepo.manifest import Manifest, sha256
from service.codecs import decode_json, load
from service.concurrency import offload
from service.dataplane import LoadedModel
from service.errors import InvalidInput, ServiceError, UnsupportedMediaType
from service.http import codec_errors, json_response, read_body, resolve_model, v1_status
from service.inspection import DEFAULT_MAX_TIMESTEPS, InspectionMismatch, Inspector, InvalidSequence, UnsupportedGraph
from service.openapi import documented, json_reply
from service.schemas import InspectRequestDoc, InspectResponseDoc, inspect_schema
from service.settings import Settings

log = logging.getLogger(__name__)
EXTENSION = "seqserve.inspectors"

bp = Blueprint("inspect", __name__, url_prefix="/v1")
codec_errors(bp, v1_status)


class InspectionFailed(ServiceError):
    """The served graph cannot be inspected faithfully (numpy and onnxruntime disagree, or the graph is not one we
    can recompute): the server's fault, logged, never answered with a wrong picture."""

    status = 500
    code = "inspection_failed"


class Inspectors:
    """One `Inspector` per loaded version of one app, built on first use."""

    def __init__(self, root: Path, max_timesteps: int) -> None:
        self.root = root
        self.max_timesteps = max_timesteps  # 0: the inspector's default for the head
        self._built: WeakKeyDictionary[LoadedModel, Inspector] = WeakKeyDictionary()

    def limit(self, manifest: Manifest) -> int:
        return self.max_timesteps or DEFAULT_MAX_TIMESTEPS[manifest.head]

    def get(self, model: LoadedModel) -> Inspector:
        inspector = self._built.get(model)
        if inspector is None:  # two first requests at once may both build; one of the two is kept
            inspector = self._built.setdefault(model, offload(self._build, model))
        return inspector

    def _build(self, model: LoadedModel) -> Inspector:
        started = time.perf_counter()
        manifest = model.manifest
        path = self.root / manifest.name / str(manifest.version) / manifest.onnx_file
        expected = manifest.files[manifest.onnx_file].sha256
        if sha256(path) != expected:
            raise UnsupportedGraph(f"{path}: changed on disk since version {manifest.version} was loaded")
        inspector = Inspector.from_manifest(manifest, path, model.runtime.session, self.limit(manifest))
        log.info("inspector for %s/%d built in %.2fs", manifest.name, manifest.version, time.perf_counter() - started)
        return inspector

    def answer(self, model: LoadedModel, body: bytes) -> dict[str, Any]:
        """The inspection of the body's sequence, as `Inspection.to_dict()` with the model's name and version."""
        manifest = model.manifest
        data = load(inspect_schema(manifest.feature_names, self.limit(manifest)), decode_json(body))
        key = f"{manifest.name}/{manifest.version}"
        try:
            result = offload(self.get(model).inspect, data["sequence"])
        except InvalidSequence as exc:  # the schema checks the same; kept as the inspector's own guard
            raise InvalidInput(str(exc)) from None
        except (InspectionMismatch, UnsupportedGraph, ValueError, OSError) as exc:  # ValueError: manifest vs graph
            log.error("inspection of %s failed: %s", key, exc, extra={"request_id": g.get("request_id")})
            raise InspectionFailed(f"cannot inspect {key} faithfully: {exc}") from None
        answer = {"model_name": manifest.name, "model_version": str(manifest.version), **result.to_dict()}
        if "id" in data:
            answer["id"] = data["id"]
        return answer


def init_app(app: Flask, settings: Settings, root: Path) -> None:
    app.extensions[EXTENSION] = Inspectors(root, settings.inspect_max_timesteps)
    app.register_blueprint(bp)


@bp.post("/models/<name>/inspect")
@bp.post("/models/<name>/versions/<version>/inspect")
@documented(
    "Inside the model for one sequence: gates and states per layer and direction, memory matrix and horizon",
    {200: json_reply(InspectResponseDoc, "the inspection")},
    errors=(404, 415, 422, 500, 503),
    body={"application/json": InspectRequestDoc},
)
def inspect(name: str, version: str | None = None) -> Response:
    """Inside the model for one sequence: per-timestep classes and probabilities, every gate and state per layer
    and direction, the memory matrix (occlusion) and the horizon; the newest ready version unless one is named."""
    body = read_body()
    if request.mimetype not in ("", "application/json"):
        raise UnsupportedMediaType(f"Content-Type {request.mimetype!r} is not supported; use application/json")
    model = resolve_model(name, version)
    return json_response(current_app.extensions[EXTENSION].answer(model, body))
