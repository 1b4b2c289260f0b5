"""What the endpoints share: the app's dataplane, path parameters, request bodies (Content-Encoding), JSON
responses and the one error handler (v1 envelope `{"error": {"code", "message", "details"}}`, V2 envelope
`{"error": "..."}`). A `CodecError` gets its status from the API that raised it (`codec_errors`)."""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.codecs import CodecError, Limits, load
from service.dataplane import DataPlane, LoadedModel, ModelVersion
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, ServiceError
from service.schemas import ModelPathSchema
from service.settings import Settings

if TYPE_CHECKING:
    from service.app import Resources

T = TypeVar("T")
EXTENSION = "seqserve"  # where create_app keeps an app's Resources

log = logging.getLogger(__name__)
_path_schema = ModelPathSchema()


def resources() -> Resources:
    return current_app.extensions[EXTENSION]


def dataplane() -> DataPlane:
    return resources().plane


def settings() -> Settings:
    return resources().settings


def limits() -> Limits:
    return resources().limits


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(payload, status=status, headers=headers, mimetype="application/json")


@lru_cache(maxsize=4096)
def path_params(name: str, version: str | None = None) -> tuple[str, int | None]:
    """The path parameters, validated by their marshmallow schema once per distinct value (errors are not cached)."""
    try:
        params = load(_path_schema, {"name": name} if version is None else {"name": name, "version": version})
    except CodecError as exc:
        raise BadRequest(exc.message, exc.details) from None
    return params["name"], params["version"]


def resolve_model(name: str, version: str | None = None) -> LoadedModel:
    """Validate the path parameters, then find the version (404 unknown, 503 not ready)."""
    model = dataplane().get(*path_params(name, version))
    g.model_name = model.name
    return model


@dataclass(slots=True)
class Call:
    """One inference request as the endpoints' cores read it, whichever door it came in by: a Flask view
    (`answer`) or the inference lane (`service/lane.py`, straight from the WSGI environ)."""

    body: bytes
    mimetype: str  # the Content-Type without parameters, lower case ("" when absent)
    header: Callable[[str], str | None]
    arg: Callable[[str], str | None]  # a query argument
    request_id: str | None
    model: str = ""  # the model's name once the path is resolved: a label of the request's metrics and log line

    def resolve(self, plane: DataPlane, name: str, version: str | None) -> LoadedModel:
        """Validate the path parameters, then find the version (404 unknown, 503 not ready)."""
        model = plane.get(*path_params(name, version))
        self.model = model.name
        return model


def answer(core: Callable[[Resources, Call, str, str | None], T], name: str, version: str | None) -> T:
    """An endpoint's core run on the Flask view's request; the model it resolved labels the request's metrics."""
    body = read_body()  # first: an unread body would cost the client its keep-alive connection on a 404
    call = Call(body, request.mimetype, request.headers.get, request.args.get, g.get("request_id"))
    try:
        return core(resources(), call, name, version)
    finally:
        g.model_name = call.model


def admitted(model: LoadedModel) -> LoadedModel:
    """503 + Retry-After at once when the model's queue is full: inference views ask before they decode the body,
    so that an overloaded worker spends little on what it turns away."""
    if model.batcher is not None:
        model.batcher.admit()
    return model


def model_versions(name: str) -> list[ModelVersion]:
    """Every version of a model, whatever its state (404 when unknown)."""
    name, _ = path_params(name)
    versions = dataplane().versions(name)
    g.model_name = name
    return versions


def read_body() -> bytes:
    """The body, at most `MAX_CONTENT_LENGTH` bytes before and after gunzip. Werkzeug refuses a larger
    Content-Length, but passes a chunked body (no Content-Length) through unbounded: hence the bounded read."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    parts, size = [], 0
    while chunk := request.stream.read(min(1 << 20, limit + 1 - size)):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
    return decompress(b"".join(parts), request.headers.get("Content-Encoding"), limit)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """`Content-Encoding`: identity or gzip (bounded, against decompression bombs)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(body)) as f:
            data = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadRequest(f"body is not valid gzip: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    return data


def codec_errors(bp: Blueprint, status_of: Callable[[CodecError], type[ServiceError]]) -> None:
    """Register how one API reports a `CodecError` (its status), through the one error handler."""

    def handle(exc: CodecError) -> Response:
        return handle_error(status_of(exc)(exc.message, exc.details))

    bp.register_error_handler(CodecError, handle)


def v1_status(exc: CodecError) -> type[ServiceError]:
    return BadRequest if exc.unreadable else InvalidInput


def error_flavour(path: str) -> str:
    """Which error envelope a path answers with (the OpenAPI document asks the same question)."""
    return "v2" if path == "/v2" or path.startswith("/v2/") else "v1"


def handle_error(exc: Exception) -> Response:
    status, headers, body = error_reply(exc, request.method, request.path, g.get("request_id"))
    return Response(body, status=status, headers=headers, mimetype="application/json")


def error_reply(exc: Exception, method: str, path: str, request_id: str | None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body of the answer to `exc` (every door reports errors through here: the Flask
    handlers and the inference lane, `service/lane.py`)."""
    if isinstance(exc, ServiceError):
        status, code, message, details, headers = exc.status, exc.code, exc.message, exc.details, exc.headers
    elif isinstance(exc, HTTPException):
        status, message, details = exc.code or 500, exc.description or exc.name, None
        code = exc.name.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        if isinstance(exc, MethodNotAllowed):
            message = f"{method} is not allowed on {path}; allowed: {', '.join(exc.valid_methods or [])}"
        elif status == 404:
            message = f"no endpoint at {path}; the API is described at /openapi.json"
        elif status == 413:
            message = f"body exceeds the limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes"
            code = PayloadTooLarge.code
    else:
        log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        status, code, message, details, headers = 500, "internal_error", "internal error", None, {}
    if error_flavour(path) == "v2":
        body: dict[str, Any] = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
    return status, headers, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)


def init_app(app: Flask) -> None:
    app.register_error_handler(ServiceError, handle_error)
    app.register_error_handler(HTTPException, handle_error)
    app.register_error_handler(Exception, handle_error)
