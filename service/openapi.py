"""The OpenAPI 3 document, generated from the routes the app registers and the marshmallow schemas.

Each view declares its documentation next to its route with `@documented(...)`: a summary, its success replies,
the error statuses that only it answers, its request body per content type and its query or header parameters.
`build_spec(app)` walks `app.url_map` and writes one operation per rule and method. What shared code answers is
added here, once, to every route it applies to, so the document cannot drift from the code that answers:

- path parameters come from `PATH_PARAMETERS` (a model name matches `modelrepo.layout.NAME_PATTERN`, a version is a
  positive integer; both checked by `http.path_params`, hence 400); a route with another parameter declares it;
- a route with a body may answer 400 (Content-Encoding, gzip) and 413 (`SEQSERVE_MAX_BODY_BYTES`, also after
  gunzip); every operation may answer 405 with `Allow` (another method on the same path); 503 may carry
  `Retry-After`; every answer carries `X-Request-ID`;
- error bodies use the envelope `http.error_flavour` picks for the path, as the error handler does;
- HEAD (Flask answers it for every GET, without a body) and OPTIONS (for every rule, with `Allow`).

A view without `@documented`, or a path parameter nobody describes, leaves its route out of the document and in
`undocumented(app)`: tests/service/test_openapi.py fails on any, so a route added later must bring its description.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields
from werkzeug.routing import Rule

from modelrepo.layout import NAME_PATTERN
from service.http import error_flavour
from service.schemas import ErrorDoc, TensorDataField, TimestepDoc, V2ErrorDoc

SchemaLike = type[Schema] | dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])
ATTRIBUTE = "__openapi__"
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": NAME_PATTERN, "description": "model name", "example": "basicmotions"},
    "version": {"type": "integer", "minimum": 1, "description": "model version (a positive integer)", "example": 1},
}
VALIDATED_PATH_PARAMETERS = {"name", "version"}  # http.path_params answers 400 for a malformed value

ERRORS: dict[int, str] = {
    400: "unreadable request: malformed body, framing, header, encoding or path parameter; the message says where",
    401: "missing or wrong credentials",
    403: "forbidden (the feature is off)",
    404: "no such model or version (the message lists those there are)",
    405: "this path does not take the method used; `Allow` lists those it does",
    409: "the state this request builds on has moved on",
    413: "body above SEQSERVE_MAX_BODY_BYTES (also once gunzipped)",
    415: "Content-Type not supported (the message lists those that are)",
    422: "readable but invalid content; `details` gives the path (sequence, timestep, feature)",
    503: "not ready (loading, failed, or no ready version), or the model's queue is full (then with Retry-After)",
    504: "inference did not start in time",
}
REQUEST_ID = {"description": "the request's id (given, or generated)", "required": True, "schema": {"type": "string"}}
HEADERS: dict[int, dict[str, Any]] = {
    405: {"Allow": {"description": "methods this path takes", "required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait (queue full)", "schema": {"type": "integer", "minimum": 0}}},
}
CONTENT_ENCODING = {
    "in": "header",
    "name": "Content-Encoding",
    "description": "gzip: the body is gunzipped (bounded by SEQSERVE_MAX_BODY_BYTES)",
    "schema": {"type": "string", "enum": ["gzip", "identity"]},
}


@dataclass(frozen=True)
class Reply:
    """One documented answer: its content per media type (a marshmallow schema or a JSON schema) and headers."""

    description: str
    content: Mapping[str, SchemaLike] = field(default_factory=dict)
    headers: Mapping[str, dict[str, Any]] = field(default_factory=dict)


def json_reply(schema: SchemaLike, description: str = "OK") -> Reply:
    return Reply(description, {"application/json": schema})


@dataclass(frozen=True)
class Operation:
    summary: str
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    body: Mapping[str, SchemaLike] | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    path: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


def documented(
    summary: str,
    replies: Mapping[int, Reply],
    *,
    errors: tuple[int, ...] = (),
    body: Mapping[str, SchemaLike] | None = None,
    parameters: tuple[dict[str, Any], ...] = (),
    path: Mapping[str, dict[str, Any]] | None = None,
    description: str = "",
) -> Callable[[View], View]:
    """Declare a view's OpenAPI operation (for every method its routes take but HEAD and OPTIONS, which are
    derived). `errors`: the statuses only this view answers (404, 415, 422, 503...); `path`: schemas of path
    parameters that `PATH_PARAMETERS` does not know."""
    operation = Operation(summary, replies, errors, body, parameters, dict(path or {}), description)

    def attach(view: View) -> View:
        setattr(view, ATTRIBUTE, operation)
        return view

    return attach


# ----------------------------------------------------------------------------------------------- walking


_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def openapi_path(rule: Rule) -> str:
    """`/v1/models/<name>/versions/<version>` -> `/v1/models/{name}/versions/{version}`."""
    return _ARGUMENT.sub(r"{\1}", rule.rule)


# Endpoints Flask registers itself (no view of ours to decorate): documented here.
FLASK_ENDPOINTS: dict[str, Operation] = {
    "static": Operation(
        "Static files of the app (Flask's own route)",
        {200: Reply("the file", {"*/*": BINARY})},
        errors=(404,),
        path={"filename": {"type": "string", "pattern": r"^[A-Za-z0-9._-]+$"}},
    ),
    "home.static": Operation(
        "The home page's own files: its script, style sheet and the bundled example recordings",
        {200: Reply("the file", {"*/*": BINARY})},
        errors=(404,),
        path={"filename": {"type": "string", "pattern": r"^[A-Za-z0-9._/-]+$"}},
    ),
}


def operation_of(app: Flask, rule: Rule) -> Operation | None:
    documented_view = getattr(app.view_functions.get(rule.endpoint), ATTRIBUTE, None)
    return documented_view or FLASK_ENDPOINTS.get(rule.endpoint)


def _gaps(app: Flask, rule: Rule) -> list[str]:
    """Why a route cannot be documented (none when it can)."""
    operation = operation_of(app, rule)
    if operation is None:
        return [f"{rule.rule} ({rule.endpoint}): its view has no @documented(...)"]
    unknown = sorted(rule.arguments - PATH_PARAMETERS.keys() - operation.path.keys())
    return [f"{rule.rule} ({rule.endpoint}): path parameter <{argument}> has no schema" for argument in unknown]


def undocumented(app: Flask) -> list[str]:
    """Routes left out of the document, each with the reason."""
    return [gap for rule in app.url_map.iter_rules() for gap in _gaps(app, rule)]


def build_spec(app: Flask) -> dict[str, Any]:
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="seqserve",
        version=metadata.version("seqserve"),
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Per-timestep predictions from recurrent sequence classifiers; KServe V2 compatible."},
    )
    plugin.converter.add_attribute_function(_tensor_data)
    spec.components.schema("Error", schema=ErrorDoc)
    spec.components.schema("V2Error", schema=V2ErrorDoc)
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        operation = operation_of(app, rule)
        if operation is not None and not _gaps(app, rule):
            spec.path(openapi_path(rule), operations=_operations(rule, operation))
    return spec.to_dict()


def _operations(rule: Rule, operation: Operation) -> dict[str, Any]:
    methods = sorted(rule.methods or ())
    parameters = [_path_parameter(name, operation) for name in sorted(rule.arguments)]
    flavour = error_flavour(rule.rule)
    tag = rule.endpoint.split(".")[0]
    operations: dict[str, Any] = {}
    for method in methods:
        if method in ("HEAD", "OPTIONS"):
            continue
        operations[method.lower()] = _explicit(rule, method, operation, parameters, flavour, tag)
    if "HEAD" in methods and "get" in operations:
        get = operations["get"]
        operations["head"] = {
            **{k: v for k, v in get.items() if k not in ("responses", "operationId", "summary")},
            "summary": f"{operation.summary} (headers only)",
            "operationId": _operation_id("HEAD", rule),
            "responses": {code: _without_content(reply) for code, reply in get["responses"].items()},
        }
    if "OPTIONS" in methods:
        operations["options"] = _options(rule, parameters, flavour, tag)
    return operations


OPTIONS_NOTE = "Flask answers it for any value of the path parameters, unchecked (one holding '/' matches no route)"


def _options(rule: Rule, parameters: list[dict[str, Any]], flavour: str, tag: str) -> dict[str, Any]:
    allow = {"Allow": HEADERS[405]["Allow"], "X-Request-ID": REQUEST_ID}
    responses = {"200": {"description": "`Allow` lists the methods", "headers": allow}}
    if parameters:
        responses["404"] = {**_error(404, flavour), "description": "a path parameter holds '/' or a line break"}
    return {
        "summary": "The methods this path takes",
        "operationId": _operation_id("OPTIONS", rule),
        "tags": [tag],
        "description": OPTIONS_NOTE,
        "parameters": [{**p, "schema": {"type": "string"}} for p in parameters],
        "responses": responses,
    }


def _explicit(
    rule: Rule, method: str, operation: Operation, path_parameters: list[dict[str, Any]], flavour: str, tag: str
) -> dict[str, Any]:
    statuses = set(operation.errors) | {405}
    if rule.arguments & VALIDATED_PATH_PARAMETERS:
        statuses.add(400)
    parameters = [*path_parameters, *operation.parameters]
    entry: dict[str, Any] = {"summary": operation.summary, "operationId": _operation_id(method, rule), "tags": [tag]}
    if operation.description:
        entry["description"] = operation.description
    if operation.body is not None:
        statuses |= {400, 413}
        parameters.append(CONTENT_ENCODING)
        entry["requestBody"] = {
            "required": True,
            "content": {kind: {"schema": schema} for kind, schema in operation.body.items()},
        }
    entry["parameters"] = parameters
    responses = {str(code): _reply(code, reply) for code, reply in operation.replies.items()}
    for code in sorted(statuses - set(operation.replies)):
        responses[str(code)] = _error(code, flavour)
    entry["responses"] = dict(sorted(responses.items()))
    return entry


def _path_parameter(name: str, operation: Operation) -> dict[str, Any]:
    schema = dict(operation.path.get(name) or PATH_PARAMETERS[name])
    description = schema.pop("description", "")
    return {"in": "path", "name": name, "required": True, "description": description, "schema": schema}


def _operation_id(method: str, rule: Rule) -> str:
    return method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", rule.rule).rstrip("_")


def _headers(code: int, extra: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    return {"X-Request-ID": REQUEST_ID, **HEADERS.get(code, {}), **extra}


def _reply(code: int, reply: Reply) -> dict[str, Any]:
    entry: dict[str, Any] = {"description": reply.description, "headers": _headers(code, reply.headers)}
    if reply.content:
        entry["content"] = {kind: {"schema": schema} for kind, schema in reply.content.items()}
    return entry


def _error(code: int, flavour: str) -> dict[str, Any]:
    schema = "V2Error" if flavour == "v2" else "Error"
    return {
        "description": ERRORS.get(code, "error"),
        "headers": _headers(code, {}),
        "content": {"application/json": {"schema": schema}},
    }


def _without_content(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "content"}


def _schema_name(schema: type[Schema] | Schema) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema").removesuffix("Doc")


def _tensor_data(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """JSON schemas of our custom payload fields (apispec knows marshmallow's own)."""
    if isinstance(field, TensorDataField):
        return {"type": "array", "items": {}, "description": "flat or nested list of numbers"}
    if isinstance(field, TimestepDoc):
        return dict(TimestepDoc.JSON_SCHEMA)
    return {}
