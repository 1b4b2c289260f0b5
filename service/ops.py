"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document and its docs page (assets served by
us from the swagger-ui-bundle package: no CDN is reachable from an air-gapped cluster)."""

from __future__ import annotations

from functools import cache

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from service.http import dataplane, json_response, resources
from service.openapi import build_spec

bp = Blueprint("ops", __name__)

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seqserve API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


@bp.get("/health")
def health() -> Response:
    return json_response({"status": "alive"})


@bp.get("/ready")
def ready() -> Response:
    is_ready, report = dataplane().readiness()
    return json_response(report, 200 if is_ready else 503)


@bp.get("/metrics")
def prometheus() -> Response:
    payload, content_type = resources().metrics.exposition()
    return Response(payload, content_type=content_type)


@cache
def _spec_bytes() -> bytes:
    import orjson

    return orjson.dumps(build_spec())


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(_spec_bytes())


@bp.get("/docs")
def docs() -> Response:
    return Response(DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:filename>")
def docs_static(filename: str) -> Response:
    return send_from_directory(swagger_ui_path, filename)
