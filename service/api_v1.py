"""Our own API: model listing and per-timestep predictions."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response

from service import codecs
from service.codecs import Limits, PredictRequest, RawMeta
from service.dataplane import LoadedModel, ModelVersion
from service.errors import UnsupportedMediaType
from service.http import (
    Call,
    admitted,
    answer,
    codec_errors,
    dataplane,
    json_response,
    model_versions,
    path_params,
    v1_status,
)
from service.openapi import BINARY, documented, json_reply
from service.schemas import (
    ModelDoc,
    ModelListDoc,
    PredictRequestDoc,
    PredictResponseDoc,
    StreamRequestDoc,
    StreamResponseDoc,
)

if TYPE_CHECKING:
    from service.app import Resources

bp = Blueprint("v1", __name__, url_prefix="/v1")
codec_errors(bp, v1_status)
# The headers and query argument of a raw float32 body (predict and stream).
PREDICT_PARAMETERS = (
    {
        "in": "header",
        "name": "Seqserve-Shape",
        "description": "B,T,F of a raw float32 body (application/octet-stream)",
        "schema": {"type": "string", "pattern": r"^\s*\d+\s*,\s*\d+\s*,\s*\d+\s*$"},
    },
    {
        "in": "header",
        "name": "Seqserve-Lengths",
        "description": "l1,...,lB: each sequence's true length in a binary body (default: T)",
        "schema": {"type": "string", "pattern": r"^\s*\d+(\s*,\s*\d+)*\s*$"},
    },
    {
        "in": "query",
        "name": "outputs",
        "description": "what a binary body's answer holds (JSON bodies say it in `outputs`)",
        "schema": {"type": "string", "pattern": "^(labels|probabilities|logits)(,(labels|probabilities|logits))*$"},
    },
)


def describe(version: ModelVersion) -> dict[str, Any]:
    info = version.describe()
    if version.loaded is not None:
        m = version.loaded.manifest
        info.update(
            classes=m.class_names,
            feature_names=m.feature_names,
            input_dim=m.input_dim,
            head=m.head,
            cell=m.model.cell,
            hidden_size=m.model.hidden_size,
            layers=m.model.num_layers,
            bidirectional=m.model.bidirectional,
            metrics=m.metrics,
            batching=asdict(version.loaded.policy),
            created=m.created or None,
        )
    return info


@bp.get("/models")
@documented("Models and their versions (state, provider, classes, features, batching)", {200: json_reply(ModelListDoc)})
def list_models() -> Response:
    plane = dataplane()
    return json_response(
        {"models": [{"name": n, "versions": [describe(v) for v in plane.versions(n)]} for n in plane.names()]}
    )


@bp.get("/models/<name>")
@documented("One model and its versions", {200: json_reply(ModelDoc)}, errors=(404, 503))
def get_model(name: str) -> Response:
    return json_response({"name": name, "versions": [describe(v) for v in model_versions(name)]})


@bp.post("/models/<name>/predict")
@bp.post("/models/<name>/versions/<version>/predict")
@documented(
    "Per-timestep (or per-sequence) predictions for a batch of variable-length sequences",
    {200: json_reply(PredictResponseDoc, "predictions")},
    errors=(404, 415, 422, 503, 504),
    body={
        "application/json": PredictRequestDoc,
        "application/octet-stream": {**BINARY, "description": "little-endian float32 [B,T,F] (Seqserve-Shape)"},
        "application/x-npy": {**BINARY, "description": "a .npy file of a float array [B,T,F]"},
    },
    parameters=PREDICT_PARAMETERS,
)
def predict(name: str, version: str | None = None) -> Response:
    return json_response(answer(predict_reply, name, version))


def predict_reply(res: Resources, call: Call, name: str, version: str | None) -> bytes:
    """The predict endpoint, whichever door the request came in by (the view above, or `service/lane.py`)."""
    model = admitted(call.resolve(res.plane, name, version))
    parsed = parse_predict(call, model, res.limits)
    outputs = res.plane.infer(model, {"features": parsed.features, "lengths": parsed.lengths})
    return codecs.v1_response(model.manifest, parsed, outputs, call.request_id)


@bp.post("/models/<name>/stream")
@bp.post("/models/<name>/versions/<version>/stream")
@documented(
    "New timesteps of a live sequence, from the state of the previous answer's token (unidirectional models)",
    {200: json_reply(StreamResponseDoc, "this request's answers, the next state token and the step count")},
    errors=(404, 409, 415, 422, 503, 504),
    body={
        "application/json": StreamRequestDoc,
        "application/octet-stream": {**BINARY, "description": "little-endian float32 [1,T,F] (Seqserve-Shape)"},
        "application/x-npy": {**BINARY, "description": "a .npy file of a float array [1,T,F]"},
    },
    parameters=(
        {
            "in": "header",
            "name": "Seqserve-State",
            "description": "the previous answer's state token, with a binary body (JSON bodies carry it in `state`)",
            "schema": {"type": "string"},
        },
        *PREDICT_PARAMETERS,
    ),
)
def stream(name: str, version: str | None = None) -> Response:
    """New timesteps of a live sequence, with the state token of the previous answer (service/streams.py)."""
    return json_response(answer(stream_reply, name, version))


def stream_reply(res: Resources, call: Call, name: str, version: str | None) -> bytes:
    """The stream endpoint, whichever door the request came in by (the view above, or `service/lane.py`)."""
    name, number = path_params(name, version)
    call.model = name
    streams = res.streams
    if call.mimetype in ("", "application/json"):
        data = codecs.decode_json(call.body)
        token = data.get("state") if isinstance(data, dict) and isinstance(data.get("state"), str) else None
        model, state = streams.token_model(name, number, token)
        chunk = codecs.v1_stream_json(data, admitted(model).manifest, res.limits)
    else:
        model, state = streams.token_model(name, number, call.header("Seqserve-State"))
        chunk = codecs.v1_stream_chunk(parse_predict(call, admitted(model), res.limits))
    outputs, token, steps = streams.token_step(model, chunk.features, state)
    return codecs.v1_stream_response(model.manifest, chunk, outputs, token, steps)


def parse_predict(call: Call, model: LoadedModel, limits: Limits) -> PredictRequest:
    """The codec for the body's Content-Type."""
    kind = call.mimetype
    if kind in ("", "application/json"):
        return codecs.v1_json(call.body, model.manifest, limits)
    meta = RawMeta(call.header("Seqserve-Shape"), call.header("Seqserve-Lengths"), call.arg("outputs"))
    if kind == "application/octet-stream":
        return codecs.v1_raw(call.body, meta, model.manifest, limits)
    if kind == "application/x-npy":
        return codecs.v1_npy(call.body, meta, model.manifest, limits)
    raise UnsupportedMediaType(
        f"Content-Type {kind!r} is not supported; use application/json, application/octet-stream "
        "(with a Seqserve-Shape header) or application/x-npy"
    )
