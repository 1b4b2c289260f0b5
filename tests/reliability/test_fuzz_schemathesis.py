"""schemathesis against `/openapi.json` of a real gunicorn on 127.0.0.1: every operation, positive and negative
cases (examples, coverage and fuzzing phases). Every answer must be documented (status, content type, headers,
schema), no answer may be a 5xx or show internal details, negative data must be refused, and afterwards the server
must be the same healthy server (same workers, no traceback in its log).

`make test` sends at least 2,000 cases; `make fuzz` sets FUZZ_CASES=20000 (and FUZZ_SECONDS, its time bound).
The figures are printed (`pytest -s`) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.conftest import REPO_ROOT
from tests.reliability.fuzz_support import ServerWatch, run_schemathesis
from tests.service.conftest import Server, start_server


def budget() -> tuple[int, float, int]:
    """Cases to send, seconds they may take, examples per operation and run of st (`make fuzz` sets the first two)."""
    env = os.environ
    return (
        int(env.get("FUZZ_CASES", "2000")),
        float(env.get("FUZZ_SECONDS", "400")),
        int(env.get("FUZZ_EXAMPLES", "30")),
    )


@pytest.fixture(scope="module")
def fuzzed(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(model_repository, tmp_path_factory.mktemp("fuzzed") / "gunicorn.log")
    yield server
    assert server.stop() == 0, server.logs()[-5000:]


@pytest.mark.timeout(0)  # bounded by its budget: each st run is stopped when the time is spent
def test_schemathesis_finds_nothing(fuzzed: Server, model_repository: Path, tmp_path: Path):
    cases, seconds, examples = budget()
    watch = ServerWatch(fuzzed)
    document = fuzzed.get("/openapi.json").json()
    validate(document)
    paths = document["paths"]
    operations = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    forbidden = (str(model_repository.resolve()), str(REPO_ROOT), str(fuzzed.log.parent))
    result = run_schemathesis(
        fuzzed, tmp_path, cases=cases, examples=examples, max_seconds=seconds, forbidden=forbidden
    )
    print(f"\nschemathesis: {result.summary()}")
    assert result.failed_runs == [], result.failed_runs[0]
    assert result.cases >= cases, result.summary()
    assert not [s for s in result.statuses if s >= 500], result.summary()
    # st loads the document through GET /openapi.json itself (validated above) and does not always send it again.
    assert operations - set(result.operations) - {"GET /openapi.json"} == set(), "operations no case reached"
    assert result.statuses[200] > 0, "no generated case reached a model"
    assert watch.problems() == []
