"""What the endpoints share: the dataplane of this app, path parameters, request bodies, JSON responses and the
one error handler (v1 envelope `{"error": {"code", "message", "details"}}`, V2 envelope `{"error": "..."}`)."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.codecs import decompress, load
from service.dataplane import DataPlane, ModelVersion
from service.errors import BadRequest, PayloadTooLarge, ServiceError
from service.schemas import ModelPathSchema

log = logging.getLogger(__name__)
_path_schema = ModelPathSchema()


def dataplane() -> DataPlane:
    return current_app.extensions["seqserve"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(payload, status=status, headers=headers, mimetype="application/json")


@lru_cache(maxsize=4096)
def path_params(name: str, version: str | None = None) -> tuple[str, int | None]:
    """The path parameters, validated by their marshmallow schema once per distinct value (errors are not cached)."""
    params = load(_path_schema, {"name": name} if version is None else {"name": name, "version": version}, BadRequest)
    return params["name"], params["version"]


def resolve_model(name: str, version: str | None = None) -> ModelVersion:
    """Validate the path parameters, then find the version (404 unknown, 503 not ready)."""
    model = dataplane().get(*path_params(name, version))
    g.model_name = model.name
    return model


def model_versions(name: str) -> list[ModelVersion]:
    """Every version of a model, whatever its state (404 when unknown)."""
    name, _ = path_params(name)
    versions = dataplane().versions(name)
    g.model_name = name
    return versions


def read_body() -> bytes:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return decompress(request.get_data(cache=False), request.headers.get("Content-Encoding"), limit)


def handle_error(exc: Exception) -> Response:
    if isinstance(exc, ServiceError):
        status, code, message, details, headers = exc.status, exc.code, exc.message, exc.details, exc.headers
    elif isinstance(exc, HTTPException):
        status, message, details = exc.code or 500, exc.description or exc.name, None
        code = exc.name.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        if isinstance(exc, MethodNotAllowed):
            message = (
                f"{request.method} is not allowed on {request.path}; allowed: {', '.join(exc.valid_methods or [])}"
            )
        elif status == 404:
            message = f"no endpoint at {request.path}; the API is described at /openapi.json"
        elif status == 413:
            message = f"body exceeds the limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes"
            code = PayloadTooLarge.code
    else:
        log.error("unhandled error", exc_info=exc, extra={"request_id": g.get("request_id")})
        status, code, message, details, headers = 500, "internal_error", "internal error", None, {}
    if request.path.startswith("/v2"):
        body: dict[str, Any] = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, "details": details, "request_id": g.get("request_id")}}
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), status=status, headers=headers, mimetype="application/json"
    )


def init_app(app: Flask) -> None:
    app.register_error_handler(ServiceError, handle_error)
    app.register_error_handler(HTTPException, handle_error)
    app.register_error_handler(Exception, handle_error)
