"""POST /v1/models/<name>[/versions/<v>]/inspect through a real gunicorn: the answer carries the numbers of
`Inspector` run directly on the same files, bad input is a located 422, the length limit holds, bidirectional models
work, and a manifest that no longer matches its graph is a logged 500, never a wrong picture."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelrepo import manifest as manifests
from modelrepo.manifest import Normalization
from service.inspection import Inspector, horizons
from service.settings import Settings
from tests.conftest import FEATURE_NAMES, HIDDEN, make_stream
from tests.service.conftest import Server, start_server

LIMIT = 40
WORKERS = 2  # start_server's


@pytest.fixture(scope="module")
def repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared models, and `broken`: lstm_step's files with its manifest's normalisation mean shifted and the
    checksums re-made. The graph keeps its own normalisation, so the version loads and predicts correctly: only an
    inspection, which recomputes the model from the manifest's numbers, can notice."""
    import shutil

    root = tmp_path_factory.mktemp("inspect_api") / "repository"
    shutil.copytree(model_repository, root)
    folder = root / "broken" / "1"
    shutil.copytree(model_repository / "lstm_step" / "1", folder)
    manifest = manifests.read(folder)
    shifted = Normalization(tuple(m + 1.0 for m in manifest.normalization.mean), manifest.normalization.std)
    manifest = dataclasses.replace(manifest, name="broken", normalization=shifted, files=manifests.file_entries(folder))
    manifests.write(folder, manifest)
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(repository, tmp_path_factory.mktemp("server") / "gunicorn.log", inspect_max_timesteps=LIMIT)
    yield s
    assert s.stop() == 0, s.logs()


def sequence(steps: int = 24, seed: int = 3) -> np.ndarray:
    features, _ = make_stream(steps, seed=seed, segment=(6, 10))
    return features


def inspect(server: Server, model: str, body: Any, version: int | None = None) -> Any:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + "/inspect"
    return server.post(path, body)


def test_the_answer_is_the_inspectors_own_numbers(server, repository):
    x = sequence()
    response = inspect(server, "lstm_step", {"sequence": x.tolist(), "id": "a-7"})
    assert response.status_code == 200, response.text
    answer = response.json()
    direct = Inspector.from_version(repository / "lstm_step" / "1").inspect(x)
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("lstm_step", "1", "a-7")
    assert answer["labels"] == list(direct.labels)
    assert answer["timesteps"] == len(x)
    np.testing.assert_allclose(answer["probabilities"], direct.probabilities, rtol=0, atol=1e-5)
    [layer] = answer["layers"]
    for name, values in direct.layers[0].gates.items():
        np.testing.assert_allclose(layer["gates"][name], values, rtol=0, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(layer["hidden"], direct.layers[0].hidden, rtol=0, atol=1e-9)
    np.testing.assert_allclose(layer["cell_state"], direct.layers[0].cell_state, rtol=0, atol=1e-9)
    np.testing.assert_allclose(answer["memory"], direct.memory, rtol=0, atol=1e-5)
    assert answer["horizon"] == horizons(np.array(answer["memory"])).tolist()
    assert answer["check"]["max_abs_difference"] <= answer["check"]["tolerance"] == 1e-5


def test_timesteps_keyed_by_feature_name_are_the_same_sequence(server):
    x = sequence(8)
    keyed = [dict(zip(FEATURE_NAMES, map(float, row), strict=True)) for row in x]
    by_list, by_name = (
        inspect(server, "lstm_step", {"sequence": x.tolist()}),
        inspect(server, "lstm_step", {"sequence": keyed}),
    )
    assert by_list.status_code == by_name.status_code == 200
    assert by_name.json()["probabilities"] == by_list.json()["probabilities"]


def test_a_bidirectional_two_layer_gru_by_version(server, repository):
    x = sequence(12, seed=4)
    response = inspect(server, "gru_last", {"sequence": x.tolist()}, version=1)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["cell"], answer["head"], answer["bidirectional"]) == ("gru", "last", True)
    assert [(e["layer"], e["direction"]) for e in answer["layers"]] == [
        (0, "forward"), (0, "backward"), (1, "forward"), (1, "backward")
    ]  # fmt: skip
    direct = Inspector.from_version(repository / "gru_last" / "1").inspect(x)
    for entry, expected in zip(answer["layers"], direct.layers, strict=True):
        assert list(entry["gates"]) == ["reset", "update", "new"]
        assert "cell_state" not in entry
        for name, values in expected.gates.items():
            assert np.array(entry["gates"][name]).shape == (len(x), HIDDEN)
            np.testing.assert_allclose(entry["gates"][name], values, rtol=0, atol=1e-9)
    memory = np.array(answer["memory"])
    assert np.all(memory[np.triu_indices(len(x), 1)] == 0.0)  # a `last` head at t answers for x[:t+1]
    assert np.all(np.abs(np.diag(memory)) > 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sequence": [[1, 2, 3, 4, 5, 6], [1, 2, "x", 4, 5, 6]]}, "sequence[1][2]: expected a number, got a string"),
        ({"sequence": [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5]]}, "sequence[1]: expected 6 features, got 5"),
        ({"sequence": [[0, 0, 0, 1e39, 0, 0]]}, "sequence[0][3]: value 1e+39 is not a finite float32"),
        ({"sequence": [[0, 0, 0, None, 0, 0]]}, "sequence[0][3]: expected a number, got null"),
        (
            {"sequence": [{"ax": 1, "ay": 2, "az": 3, "gx": 4, "gy": 5}]},
            "sequence[0]: missing features ['gz'] (expected ['ax', 'ay', 'az', 'gx', 'gy', 'gz'])",
        ),
        ({"sequence": []}, "sequence: empty: send at least one timestep"),
        (
            {"sequence": [[0] * 6] * (LIMIT + 1)},
            f"sequence: {LIMIT + 1} timesteps exceed the limit of {LIMIT} per request",
        ),
        ({"sequences": [[[0] * 6]]}, "sequences: Unknown field."),
    ],
    ids=["string", "width", "float32", "null", "keyed", "empty", "too-long", "unknown-field"],
)
def test_invalid_input_is_a_located_422(server, body, message):
    response = inspect(server, "lstm_step", body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert message in error["message"]


def test_the_length_limit_admits_exactly_the_limit(server):
    assert inspect(server, "lstm_step", {"sequence": sequence(LIMIT).tolist()}).status_code == 200
    assert inspect(server, "lstm_step", {"sequence": sequence(LIMIT + 1).tolist()}).status_code == 422


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/v1/models/nope/inspect", {"data": b'{"sequence": [[0,0,0,0,0,0]]}'}, 404, "model 'nope' not found"),
        ("/v1/models/lstm_step/versions/7/inspect", {"data": b"{}"}, 404, "model 'lstm_step' has no version 7"),
        ("/v1/models/lstm_step/inspect", {"data": b'{"sequence": [[1, 2'}, 400, "body is not valid JSON"),
        ("/v1/models/lstm_step/inspect", {"data": b"a,b", "headers": {"Content-Type": "text/csv"}}, 415, "text/csv"),
    ],
    ids=["model", "version", "json", "content-type"],
)
def test_requests_that_name_nothing_inspectable(server, path, kwargs, status, message):
    kwargs.setdefault("headers", {"Content-Type": "application/json"})
    response = server.session.post(server.url + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def logged(server: Server, text: str, timeout: float = 10.0) -> list[str]:
    """The server's log lines holding `text`, waiting for at least one (logs are written by a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.logs().splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_a_manifest_that_no_longer_matches_its_graph_is_a_logged_500(server):
    x = sequence(10)
    assert server.post("/v1/models/broken/predict", {"sequences": [x.tolist()]}).status_code == 200
    response = inspect(server, "broken", {"sequence": x.tolist()})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "inspection_failed"
    assert error["message"].startswith("cannot inspect broken/1 faithfully: ")
    assert re.search(r"disagree by .* at timestep \d+ \(tolerance 1e-05\)", error["message"])
    request_id = response.headers["X-Request-ID"]
    entries = [orjson.loads(line) for line in logged(server, "inspection of broken/1 failed")]
    assert [(entry["level"], entry.get("request_id")) for entry in entries] == [("ERROR", request_id)]


def test_each_worker_builds_its_inspector_once(server):
    for seed in range(6):
        assert inspect(server, "gru_last", {"sequence": sequence(5, seed=seed).tolist()}).status_code == 200
    assert 1 <= len(logged(server, "inspector for gru_last/1 built")) <= WORKERS


def test_the_setting_must_not_be_negative():
    assert Settings.from_mapping({"inspect_max_timesteps": "64"}).inspect_max_timesteps == 64
    with pytest.raises(ValueError, match="SEQSERVE_INSPECT_MAX_TIMESTEPS must be >= 0"):
        Settings.from_mapping({"inspect_max_timesteps": "-1"})
