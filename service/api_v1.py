"""Our own API: model listing and per-timestep predictions."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, Response, g, request

from service import codecs
from service.dataplane import ModelVersion
from service.http import dataplane, json_response, model_versions, read_body, resolve_model

bp = Blueprint("v1", __name__, url_prefix="/v1")


def describe(model: ModelVersion) -> dict[str, Any]:
    info = model.describe()
    if model.manifest is not None:
        m = model.manifest
        info.update(
            classes=m.class_names,
            feature_names=m.feature_names,
            input_dim=m.input_dim,
            head=m.head,
            cell=m.raw["model"]["cell"],
            hidden_size=m.raw["model"]["hidden_size"],
            layers=m.raw["model"]["num_layers"],
            bidirectional=m.raw["model"]["bidirectional"],
            metrics=m.raw.get("metrics", {}),
            batching=asdict(model.policy) if model.policy else None,
            created=m.raw.get("created"),
        )
    return info


@bp.get("/models")
def list_models() -> Response:
    plane = dataplane()
    return json_response(
        {"models": [{"name": n, "versions": [describe(v) for v in plane.versions(n)]} for n in plane.names()]}
    )


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    return json_response({"name": name, "versions": [describe(v) for v in model_versions(name)]})


@bp.post("/models/<name>/predict")
@bp.post("/models/<name>/versions/<version>/predict")
def predict(name: str, version: str | None = None) -> Response:
    body = read_body()  # first: an unread body would cost the client its keep-alive connection on a 404
    model = resolve_model(name, version)
    assert model.manifest is not None
    plane = dataplane()
    parsed = codecs.v1_request(body, request.mimetype, request.headers, request.args, model.manifest, plane.settings)
    outputs = plane.infer(model, {"features": parsed.features, "lengths": parsed.lengths})
    return json_response(codecs.v1_response(model.manifest, parsed, outputs, g.get("request_id")))
