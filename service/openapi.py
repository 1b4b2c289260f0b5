"""The OpenAPI 3 document, generated from the marshmallow schemas with apispec."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from service.schemas import (
    InferRequestSchema,
    PredictRequestDoc,
    PredictResponseDoc,
    TensorDataField,
)


class ErrorDetail(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True, metadata={"example": "sequences[3][17]: expected 6 features, got 5"})
    details = fields.Raw(allow_none=True, metadata={"description": "marshmallow's nested error dict"})
    request_id = fields.String()


class Error(Schema):
    error = fields.Nested(ErrorDetail, required=True)


class V2Error(Schema):
    error = fields.String(required=True)


class V2Tensor(Schema):
    name = fields.String(required=True)
    datatype = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)
    parameters = fields.Dict()
    data = fields.List(fields.Raw())


class V2InferResponse(Schema):
    model_name = fields.String(required=True)
    model_version = fields.String()
    id = fields.String()
    outputs = fields.List(fields.Nested(V2Tensor), required=True)


def _errors(*codes: int, v2: bool = False) -> dict[str, Any]:
    ref = "V2Error" if v2 else "Error"
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ref}}} for c in codes}


def _name_params(version: bool) -> list[dict[str, Any]]:
    params = [{"in": "path", "name": "name", "required": True, "schema": {"type": "string"}}]
    if version:
        params.append({"in": "path", "name": "version", "required": True, "schema": {"type": "integer", "minimum": 1}})
    return params


def build_spec() -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="seqserve",
        version=metadata.version("seqserve"),
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Per-timestep predictions from recurrent sequence classifiers; KServe V2 compatible."},
    )
    plugin.converter.add_attribute_function(_tensor_data)
    for name, schema in (
        ("PredictRequest", PredictRequestDoc),
        ("PredictResponse", PredictResponseDoc),
        ("Error", Error),
        ("V2Error", V2Error),
        ("V2InferRequest", InferRequestSchema),
        ("V2InferResponse", V2InferResponse),
    ):
        spec.components.schema(name, schema=schema)
    text = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    spec.path("/health", operations={"get": {"summary": "Liveness", "responses": {"200": text}}})
    spec.path(
        "/ready",
        operations={
            "get": {"summary": "Readiness: every model loaded and warm", "responses": {"200": text, "503": text}}
        },
    )
    spec.path(
        "/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
    spec.path("/v1/models", operations={"get": {"summary": "Models and versions", "responses": {"200": text}}})
    spec.path(
        "/v1/models/{name}",
        operations={
            "get": {
                "summary": "One model",
                "parameters": _name_params(False),
                "responses": {"200": text, **_errors(400, 404)},
            }
        },
    )
    predict = {
        "summary": "Per-timestep (or per-sequence) predictions for a batch of variable-length sequences",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": "PredictRequest"},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "float32 [B,T,F]; header Seqserve-Shape: B,T,F",
                    }
                },
                "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "200": {"description": "predictions", "content": {"application/json": {"schema": "PredictResponse"}}},
            **_errors(400, 404, 405, 413, 415, 422, 503),
        },
    }
    spec.path("/v1/models/{name}/predict", operations={"post": {**predict, "parameters": _name_params(False)}})
    spec.path(
        "/v1/models/{name}/versions/{version}/predict",
        operations={"post": {**predict, "parameters": _name_params(True)}},
    )
    spec.path("/v2/health/live", operations={"get": {"summary": "V2 liveness", "responses": {"200": text}}})
    spec.path(
        "/v2/health/ready", operations={"get": {"summary": "V2 readiness", "responses": {"200": text, "503": text}}}
    )
    spec.path(
        "/v2/models/{name}",
        operations={
            "get": {
                "summary": "V2 model metadata",
                "parameters": _name_params(False),
                "responses": {"200": text, **_errors(400, 404, v2=True)},
            }
        },
    )
    infer = {
        "summary": "V2 inference (JSON, or JSON header + binary tensors with Inference-Header-Content-Length)",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": "V2InferRequest"},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "200": {"description": "outputs", "content": {"application/json": {"schema": "V2InferResponse"}}},
            **_errors(400, 404, 413, 503, v2=True),
        },
    }
    spec.path("/v2/models/{name}/infer", operations={"post": {**infer, "parameters": _name_params(False)}})
    spec.path(
        "/v2/models/{name}/versions/{version}/infer", operations={"post": {**infer, "parameters": _name_params(True)}}
    )
    return spec.to_dict()


def _tensor_data(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    if isinstance(field, TensorDataField):
        return {"type": "array", "items": {}, "description": "flat or nested list of numbers"}
    return {}
