"""Models for the streaming tests, exported by the real export code, and helpers that stream a sequence in chunks.

`stream_models` covers every cell with 1 and 2 layers and both heads (pairwise: each cell appears with both layer
counts and both heads across the six), plus one bidirectional model, which cannot stream. Models are untrained
(tests/export/conftest.py `write_run`): what matters is that chunked equals whole, not accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.service.conftest import Server, start_server

FEATURES = 6
STREAM_MODELS: dict[str, dict[str, Any]] = {
    "lstm1_step": {"cell": "lstm", "num_layers": 1, "head": "per_timestep"},
    "lstm2_last": {"cell": "lstm", "num_layers": 2, "head": "last"},
    "gru2_step": {"cell": "gru", "num_layers": 2, "head": "per_timestep"},
    "gru1_last": {"cell": "gru", "num_layers": 1, "head": "last"},
    "rnn1_last": {"cell": "rnn", "num_layers": 1, "head": "last"},
    "rnn2_step": {"cell": "rnn", "num_layers": 2, "head": "per_timestep"},
}
BIDIRECTIONAL = "bi_step"


@pytest.fixture(scope="session")
def stream_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.pipeline import export_run
    from tests.export.conftest import write_run

    root = tmp_path_factory.mktemp("streams")
    repository = root / "repository"
    models = {**STREAM_MODELS, BIDIRECTIONAL: {"cell": "gru", "bidirectional": True}}
    for seed, (name, config) in enumerate(models.items()):
        export_run(write_run(root / "runs" / name, seed=seed, hidden_size=6, **config), repository, name)
    return repository


@pytest.fixture(scope="session")
def stream_server(stream_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers, the embedded (SQLite) sequence store, a random state key shared by the workers."""
    server = start_server(stream_repository, tmp_path_factory.mktemp("stream-server") / "gunicorn.log")
    yield server
    assert server.stop() == 0, server.logs()


def chunks(length: int, seed: int) -> list[tuple[int, int]]:
    """Random cut points: chunks of 1 to 6 timesteps covering 0..length."""
    rng = np.random.default_rng(seed)
    bounds, start = [], 0
    while start < length:
        end = min(length, start + int(rng.integers(1, 7)))
        bounds.append((start, end))
        start = end
    return bounds


def sequence(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(length, FEATURES)).round(3).astype(np.float32)


def whole_answers(server: Server, name: str, x: np.ndarray, ends: list[int], per_timestep: bool) -> np.ndarray:
    """What predict answers for the whole sequence: per timestep, or (last head) for each prefix ending at `ends`."""
    if per_timestep:
        body = {"sequences": [x.tolist()], "outputs": ["probabilities"]}
        answer = server.post(f"/v1/models/{name}/predict", body)
        assert answer.status_code == 200, answer.text
        return np.asarray(answer.json()["predictions"][0]["probabilities"])
    body = {"sequences": [x[:end].tolist() for end in ends], "outputs": ["probabilities"]}
    answer = server.post(f"/v1/models/{name}/predict", body)
    assert answer.status_code == 200, answer.text
    return np.asarray([p["probabilities"] for p in answer.json()["predictions"]])


def fresh(server: Server) -> Server:
    """The same server with a client that opens a new connection per request, so that the kernel hands requests
    to either worker (a kept-alive connection would stay with one)."""
    import requests

    session = requests.Session()
    session.headers["Connection"] = "close"
    return Server(server.url, server.process, server.log, session)
