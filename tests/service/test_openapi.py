"""The OpenAPI document covers every route the app registers, every method and every status, and a route added
without documentation is caught. Built from a real app (an empty repository: routes do not depend on models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask
from openapi_spec_validator import validate

from modelrepo.layout import NAME_PATTERN
from service.app import close_app, create_app
from service.openapi import build_spec, documented, json_reply, openapi_path, undocumented
from service.schemas import HealthDoc


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"model_repository": str(tmp_path), "log_requests": "false"})
    yield app
    close_app(app)


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_registered_route_and_method_is_in_the_document(app):
    spec = build_spec(app)
    validate(spec)
    assert undocumented(app) == []
    expected = {(openapi_path(r), m.lower()) for r in app.url_map.iter_rules() for m in r.methods or ()}
    documented_ops = {(path, method) for path, method, _ in operations(spec)}
    assert expected - documented_ops == set()
    assert documented_ops - expected == set()
    assert len(expected) >= 61  # 22 routes: their GET/POST, HEAD for each GET, OPTIONS for each


def test_a_route_without_documentation_is_reported_and_left_out(app):
    extra = Blueprint("extra", __name__)

    @extra.get("/v1/extra/<name>")
    def undocumented_view(name: str) -> str:
        return name

    @extra.get("/v1/odd/<thing>")
    @documented("A parameter nobody describes", {200: json_reply(HealthDoc)})
    def odd(thing: str) -> str:
        return thing

    app.register_blueprint(extra)
    assert undocumented(app) == [
        "/v1/extra/<name> (extra.undocumented_view): its view has no @documented(...)",
        "/v1/odd/<thing> (extra.odd): path parameter <thing> has no schema",
    ]
    paths = build_spec(app)["paths"]
    assert "/v1/extra/{name}" not in paths
    assert "/v1/odd/{thing}" not in paths


def test_path_parameters_carry_their_patterns(app):
    spec = build_spec(app)
    seen = set()
    for path, method, operation in operations(spec):
        params = {p["name"]: p for p in operation["parameters"] if p["in"] == "path"}
        assert set(params) == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (path, method)
        if method == "options":  # answered for any value, unchecked
            assert all(p["schema"] == {"type": "string"} for p in params.values())
            continue
        if "name" in params:
            assert params["name"]["schema"]["pattern"] == NAME_PATTERN
            seen.add("name")
        if "version" in params:
            assert params["version"]["schema"] == {"type": "integer", "minimum": 1, "example": 1}
            seen.add("version")
    assert seen == {"name", "version"}


def test_errors_use_the_envelope_of_their_api(app):
    spec = build_spec(app)
    checked = 0
    for path, method, operation in operations(spec):
        for status, response in operation["responses"].items():
            ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            if not ref.endswith("Error"):  # a success reply, a HEAD answer, or a 503 that is a report (/ready)
                continue
            envelope = "V2Error" if path.startswith("/v2") else "Error"
            assert ref == f"#/components/schemas/{envelope}", (path, method, status)
            checked += 1
    assert checked >= 80  # 405 on each of 22 operations, 400/404/413... on the model routes
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["$ref"] == "#/components/schemas/ErrorBody"
    assert spec["components"]["schemas"]["V2Error"]["properties"]["error"]["type"] == "string"


def test_statuses_bodies_and_headers_of_the_inference_routes(app):
    paths = build_spec(app)["paths"]
    predict = paths["/v1/models/{name}/versions/{version}/predict"]["post"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert sorted(predict["responses"]) == ["200", "400", "404", "405", "413", "415", "422", "503", "504"]
    assert sorted(infer["responses"]) == ["200", "400", "404", "405", "409", "413", "503", "504"]  # 409: sequences
    assert sorted(predict["requestBody"]["content"]) == [
        "application/json",
        "application/octet-stream",
        "application/x-npy",
    ]
    assert sorted(infer["requestBody"]["content"]) == ["application/json", "application/octet-stream"]
    assert sorted(infer["responses"]["200"]["content"]) == ["application/json", "application/octet-stream"]
    for operation in (predict, infer):
        responses = operation["responses"]
        assert responses["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
        assert responses["405"]["headers"]["Allow"]["required"] is True
        assert all(r["headers"]["X-Request-ID"]["required"] for r in responses.values())
    headers = {p["name"] for p in infer["parameters"] if p["in"] == "header"}
    assert headers == {"Inference-Header-Content-Length", "Content-Encoding"}
    assert {p["name"] for p in predict["parameters"] if p["in"] != "path"} == {
        "Seqserve-Shape",
        "Seqserve-Lengths",
        "outputs",
        "Content-Encoding",
    }


def test_head_and_options_are_derived(app):
    paths = build_spec(app)["paths"]
    head = paths["/v1/models/{name}"]["head"]
    assert sorted(head["responses"]) == sorted(paths["/v1/models/{name}"]["get"]["responses"])
    assert all("content" not in r for r in head["responses"].values())
    options = paths["/v1/models/{name}/predict"]["options"]
    assert options["responses"]["200"]["headers"]["Allow"]["required"] is True
    assert "head" not in paths["/v1/models/{name}/predict"]


def test_served_document_and_docs_page(server):
    spec = server.get("/openapi.json").json()
    validate(spec)
    assert len(spec["paths"]) >= 22
    page = server.get("/docs")
    assert page.status_code == 200
    assert 'url: "/openapi.json"' in page.text
