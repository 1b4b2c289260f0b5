"""No answer shows a stack trace or a path of the server: not the repository's absolute path (reasons name files
relative to it: `tampered/1/model.onnx: sha256 ...`), not /tmp, not the source tree, not site-packages. The log
keeps the absolute path for operators. Asked of every kind of answer the service gives, ready or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from service.app import close_app, create_app
from tests.conftest import REPO_ROOT

JSON = {"Content-Type": "application/json"}
REQUESTS = [
    ("GET", "/ready", {}),
    ("GET", "/v2/health/ready", {}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/tampered", {}),
    ("GET", "/v1/models/escape", {}),
    ("POST", "/v1/models/tampered/predict", {"data": b'{"sequences": [[[1, 2, 3, 4, 5, 6]]]}', "headers": JSON}),
    ("POST", "/v1/models/tampered/versions/1/predict", {"data": b"{}", "headers": JSON}),
    ("POST", "/v2/models/escape/infer", {"data": b'{"inputs": []}'}),
    ("GET", "/v2/models/tampered", {}),
    ("GET", "/v2/models/escape/versions/1/config", {}),
    ("GET", "/v2/models/tampered/ready", {}),
    ("GET", "/v1/models/nope", {}),
    ("GET", "/nowhere", {}),
    ("DELETE", "/v1/models/lstm_step", {}),
    ("POST", "/v1/models/lstm_step/predict", {"data": b'{"sequences": [[[1, 2', "headers": JSON}),
    ("POST", "/v1/models/lstm_step/predict", {"data": b"x" * 300_000, "headers": JSON}),
    (
        "POST",
        "/v1/models/lstm_step/predict",
        {"data": gzip.compress(b" " * 400_000), "headers": {**JSON, "Content-Encoding": "gzip"}},
    ),
    (
        "POST",
        "/v1/models/lstm_step/predict",
        {"data": b"\x1f\x8b broken", "headers": {**JSON, "Content-Encoding": "gzip"}},
    ),
    ("POST", "/v1/models/lstm_step/predict", {"data": b"\x93NUMPY", "headers": {"Content-Type": "application/x-npy"}}),
    ("POST", "/v1/models/lstm_step/predict", {"data": b"", "headers": {"Content-Type": "text/csv"}}),
    ("POST", "/v2/models/lstm_step/infer", {"data": b"{", "headers": {"Inference-Header-Content-Length": "x"}}),
    ("GET", "/docs/static/..%2F..%2Fsettings.py", {}),
]


def forbidden(repository: Path) -> list[str]:
    return [
        str(repository.resolve()),
        str(repository.parent),
        "/tmp/",
        str(REPO_ROOT),
        "site-packages",
        "Traceback",
        'File "',
    ]


@pytest.mark.parametrize(("method", "path", "options"), REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_answers_show_no_internal_details(hostile, hostile_repository, method, path, options):
    headers = {**options.get("headers", {}), "Connection": "close"}
    answer = hostile.session.request(method, hostile.url + path, data=options.get("data"), headers=headers, timeout=30)
    assert answer.status_code < 500 or answer.status_code == 503, answer.text
    text = answer.text
    assert [s for s in forbidden(hostile_repository) if s in text] == [], text[:500]


def test_reasons_stay_informative_and_the_log_keeps_the_path(hostile, hostile_repository):
    report = hostile.get("/ready").json()
    reasons = {name: versions[0]["reason"] for name, versions in report["models"].items()}
    assert reasons["tampered"].startswith("tampered/1/model.onnx: sha256")
    assert reasons["escape"].startswith("escape/1/manifest.json: unreadable manifest")
    assert "'../../outside.onnx' is not a plain file name inside the version folder" in reasons["escape"]
    assert f"{hostile_repository.resolve()}/tampered/1/model.onnx" in hostile.logs()


@pytest.mark.parametrize("kind", ["absent", "empty"])
def test_readiness_of_a_missing_or_empty_repository_names_no_path(tmp_path: Path, kind: str):
    repository = tmp_path / "repository"
    if kind == "empty":
        repository.mkdir()
    app = create_app({"model_repository": str(repository), "log_requests": "false"})
    try:
        assert app.extensions["seqserve"].plane.wait_loaded(30)
        answer = app.test_client().get("/ready")
    finally:
        close_app(app)
    assert answer.status_code == 503
    problems = answer.get_json()["problems"]
    assert problems == [
        "the model repository (SEQSERVE_MODEL_REPOSITORY) "
        + ("does not exist" if kind == "absent" else "holds no model versions")
    ]
    assert str(tmp_path) not in answer.get_data(as_text=True)
