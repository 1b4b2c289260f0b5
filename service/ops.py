"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document and its docs page (assets served by
us from the swagger-ui-bundle package: no CDN is reachable from an air-gapped cluster)."""

from __future__ import annotations

from weakref import WeakKeyDictionary

import orjson
from flask import Blueprint, Flask, Response, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from service.http import dataplane, json_response, resources
from service.openapi import BINARY, Reply, build_spec, documented, json_reply
from service.schemas import HealthDoc, ReadyDoc

bp = Blueprint("ops", __name__)

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seqserve API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""
_specs: WeakKeyDictionary[Flask, bytes] = WeakKeyDictionary()  # built once per app, on first request
OPENAPI_DOC = {"type": "object", "required": ["openapi", "info", "paths"]}


@bp.get("/health")
@documented("Liveness: the process answers", {200: json_reply(HealthDoc)})
def health() -> Response:
    return json_response({"status": "alive"})


@bp.get("/ready")
@documented(
    "Readiness: every model has a loaded, verified and warm version in every worker",
    {200: json_reply(ReadyDoc), 503: json_reply(ReadyDoc, "not ready: `problems` says why")},
)
def ready() -> Response:
    is_ready, report = dataplane().readiness()
    return json_response(report, 200 if is_ready else 503)


@bp.get("/metrics")
@documented("Prometheus metrics", {200: Reply("text exposition format", {"text/plain": {"type": "string"}})})
def prometheus() -> Response:
    payload, content_type = resources().metrics.exposition()
    return Response(payload, content_type=content_type)


@bp.get("/openapi.json")
@documented("This document", {200: json_reply(OPENAPI_DOC)})
def openapi() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app not in _specs:
        _specs[app] = orjson.dumps(build_spec(app))
    return json_response(_specs[app])


@bp.get("/docs")
@documented("Swagger UI for this document", {200: Reply("HTML page", {"text/html": {"type": "string"}})})
def docs() -> Response:
    return Response(DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:filename>")
@documented(
    "Swagger UI's assets (from the swagger-ui-bundle package)",
    {200: Reply("the file", {"*/*": BINARY})},
    errors=(404,),
    path={"filename": {"type": "string", "pattern": r"^[A-Za-z0-9._-]+$", "example": "swagger-ui.css"}},
)
def docs_static(filename: str) -> Response:
    return send_from_directory(swagger_ui_path, filename)
