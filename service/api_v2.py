"""KServe Open Inference Protocol (V2) over REST, as the stock `tritonclient.http` client speaks it: JSON tensors
(flat or nested `data`) and the binary tensor data extension. Also Triton's `/config`, so `perf_analyzer` can
drive us."""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response

from service import codecs
from service.dataplane import LoadedModel, State
from service.errors import BadRequest, NotFound
from service.http import (
    Call,
    admitted,
    answer,
    codec_errors,
    dataplane,
    json_response,
    model_versions,
    path_params,
    resolve_model,
)
from service.openapi import BINARY, Reply, documented, json_reply
from service.schemas import (
    InferRequestSchema,
    TritonConfigDoc,
    V2InferResponseDoc,
    V2LiveDoc,
    V2ModelMetadataDoc,
    V2ModelReadyDoc,
    V2ReadyDoc,
    V2ServerDoc,
)

if TYPE_CHECKING:
    from service.app import Resources

bp = Blueprint("v2", __name__, url_prefix="/v2")


def v2_status(exc: codecs.CodecError) -> type[BadRequest]:
    return BadRequest  # the protocol answers every unusable request with 400


codec_errors(bp, v2_status)
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "sequence"]
_TRITON_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}


@bp.get("")
@documented("Server metadata and protocol extensions", {200: json_reply(V2ServerDoc)})
def server_metadata() -> Response:
    return json_response({"name": "seqserve", "version": metadata.version("seqserve"), "extensions": EXTENSIONS})


@bp.get("/health/live")
@documented("V2 liveness", {200: json_reply(V2LiveDoc)})
def live() -> Response:
    return json_response({"live": True})


@bp.get("/health/ready")
@documented("V2 readiness (as /ready)", {200: json_reply(V2ReadyDoc), 503: json_reply(V2ReadyDoc, "not ready")})
def ready() -> Response:
    is_ready, _ = dataplane().readiness()
    return json_response({"ready": is_ready}, 200 if is_ready else 503)


def _metadata(model: LoadedModel) -> dict[str, Any]:
    m = model.manifest
    return {
        "name": m.name,
        "versions": [str(v.version) for v in dataplane().versions(m.name) if v.state is State.READY],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.v2_shape()} for t in m.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.v2_shape()} for t in m.outputs],
        "parameters": {
            "classes": list(m.class_names),
            "feature_names": list(m.feature_names),
            "head": m.head,
            "provider": model.runtime.provider,
            "optional_inputs": [t.name for t in m.inputs[1:]],
        },
    }


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
@documented("V2 model metadata: inputs, outputs, classes", {200: json_reply(V2ModelMetadataDoc)}, errors=(404, 503))
def model_metadata(name: str, version: str | None = None) -> Response:
    return json_response(_metadata(resolve_model(name, version)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
@documented(
    "V2 model readiness",
    {200: json_reply(V2ModelReadyDoc), 503: json_reply(V2ModelReadyDoc, "no ready version")},
    errors=(404,),
)
def model_ready(name: str, version: str | None = None) -> Response:
    versions = model_versions(name)
    _, number = path_params(name, version)
    if number is not None:
        versions = [v for v in versions if v.version == number]
        if not versions:
            raise NotFound(f"model {name!r} has no version {number}")
    is_ready = any(v.state is State.READY for v in versions)
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
@documented("Triton's model configuration (for perf_analyzer)", {200: json_reply(TritonConfigDoc)}, errors=(404, 503))
def model_config(name: str, version: str | None = None) -> Response:
    """Triton's model configuration: batch is an explicit dynamic dimension (max_batch_size 0)."""
    m = resolve_model(name, version).manifest

    def tensor(t: Any, optional: bool) -> dict[str, Any]:
        entry = {"name": t.name, "data_type": _TRITON_TYPES[t.datatype], "dims": t.v2_shape()}
        return {**entry, "optional": True} if optional else entry

    return json_response(
        {
            "name": m.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [tensor(t, t.name != "features") for t in m.inputs],
            "output": [tensor(t, False) for t in m.outputs],
            "version_policy": {"all": {}},
        }
    )


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@documented(
    "V2 inference: JSON tensors, or a JSON header followed by binary tensors (binary tensor data extension)",
    {
        200: Reply(
            "outputs: JSON, or a JSON header followed by the binary outputs",
            {"application/json": V2InferResponseDoc, "application/octet-stream": BINARY},
            {"Inference-Header-Content-Length": {"description": "bytes of JSON header", "schema": {"type": "integer"}}},
        )
    },
    errors=(404, 409, 503, 504),  # 409: a sequence request whose sequence moved on, or whose version is gone
    body={"application/json": InferRequestSchema, "application/octet-stream": BINARY},
    parameters=(
        {
            "in": "header",
            "name": "Inference-Header-Content-Length",
            "description": "bytes of JSON header before the binary tensors",
            "schema": {"type": "integer", "minimum": 1},
        },
    ),
)
def infer(name: str, version: str | None = None) -> Response:
    encoded, headers = answer(infer_reply, name, version)
    return Response(encoded, status=200, headers=headers)


def infer_reply(res: Resources, call: Call, name: str, version: str | None) -> tuple[bytes, dict[str, str]]:
    """The infer endpoint, whichever door the request came in by (the view above, or `service/lane.py`)."""
    model = admitted(call.resolve(res.plane, name, version))
    header = call.header("Inference-Header-Content-Length")
    parsed = codecs.v2_request(call.body, header, model.manifest, res.limits)
    if (sequence := codecs.v2_sequence(parsed, model.manifest)) is not None:
        return _sequence_step(res, model, call.body, header, parsed, sequence, path_params(name, version)[1])
    return codecs.v2_response(model.manifest, parsed, res.plane.infer(model, parsed.inputs))


def _sequence_step(
    res: Resources,
    newest: LoadedModel,
    body: bytes,
    header: str | None,
    parsed: codecs.InferRequest,
    sequence: codecs.SequenceParams,
    version: int | None,
) -> tuple[bytes, dict[str, str]]:
    """One request of a Triton sequence: its state comes from, and goes back to, the shared store."""
    streams = res.streams
    model, record = streams.sequence_model(newest.name, version, sequence)
    if model is not newest:  # the sequence runs on an older version: read the request as that version reads it
        parsed = codecs.v2_request(body, header, model.manifest, res.limits)
        codecs.v2_sequence(parsed, model.manifest)
    result = streams.sequence_step(model, codecs.v2_sequence_features(parsed), sequence, record)
    extra = {"sequence_id": sequence.id, "sequence_steps": result.steps}
    return codecs.v2_response(model.manifest, parsed, result.outputs, extra)
