"""Adaptive batching: merged runs give each request exactly what an unbatched run gives; a full queue answers
503 + Retry-After at once.

The batcher is driven directly (a gate holds the first run so that the rest queue behind it); waits on its queue
go through its public `queued` count, with a deadline. Through gunicorn: overload under gevent workers. Through an
app in process: per-model batching settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelrepo import layout
from service.batching import AdaptiveBatcher, BatchObserver, bucket_of
from service.errors import Overloaded
from service.runtime import ModelRuntime
from service.settings import Settings
from tests.service.conftest import start_server


def runtime_for(repository: Path, name: str) -> ModelRuntime:
    entry = layout.VersionDir(name, 1, repository / name / "1")
    return ModelRuntime(entry.path, layout.read_version(entry), "cpu", 1)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail saying what did not happen, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)


def requests_of(lengths_per_request: list[list[int]], seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for lengths in lengths_per_request:
        longest = max(lengths)
        features = np.zeros((len(lengths), longest, 6), dtype=np.float32)
        for i, n in enumerate(lengths):
            features[i, :n] = rng.normal(size=(n, 6))
        out.append({"features": features, "lengths": np.array(lengths, dtype=np.int64)})
    return out


class Gate:
    """Holds the first run until every request is queued, so the rest must merge."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime, self.open, self.runs, self.requests = runtime, threading.Event(), [], []

    def __call__(self, inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        self.open.wait(10)
        self.runs.append(inputs["features"].shape[0])
        self.requests.append(requests)
        return self.runtime.run(inputs, requests)

    def submit_all(self, batcher: AdaptiveBatcher, work: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Submit every request at once while the first run is held, so that the others queue; then open."""
        try:
            with ThreadPoolExecutor(len(work)) as pool:
                futures = [pool.submit(batcher.submit, w) for w in work]
                try:
                    wait_until(
                        lambda: batcher.queued + len(self.runs) >= len(work) - 1,
                        f"{len(work) - 1} requests queued behind the held run (queued: {batcher.queued})",
                    )
                finally:
                    self.open.set()
                return [f.result(timeout=30) for f in futures]
        finally:
            batcher.stop()


@pytest.mark.parametrize("name", ["lstm_step", "gru_last"])
def test_batched_results_equal_unbatched(model_repository, name):
    runtime = runtime_for(model_repository, name)
    gate = Gate(runtime)
    sizes: list[int] = []
    batcher = AdaptiveBatcher(
        gate,
        runtime.manifest,
        max_sequences=64,
        max_cells=64 * 64,
        max_queue=100,
        observer=BatchObserver(batch_sequences=lambda n, _: sizes.append(n)),
    )
    # Mixed lengths within and across requests; all in one length bucket (17..32) but the first.
    work = requests_of([[5], [20, 3, 31], [17], [32, 18], [25, 25, 19, 30], [1], [29]], seed=4)
    results = gate.submit_all(batcher, work)
    assert max(sizes) > 1, "nothing was merged"
    assert sum(sizes) == sum(w["features"].shape[0] for w in work)
    assert sum(gate.requests) == len(work)  # the runtime hears how many requests each run holds
    assert max(gate.requests) > 1
    for inputs, got in zip(work, results, strict=True):
        expected = runtime.run(inputs)
        for key in ("probabilities", "logits"):
            assert got[key].shape == expected[key].shape
            for i, n in enumerate(inputs["lengths"]):
                a = got[key][i, :n] if got[key].ndim == 3 else got[key][i]
                b = expected[key][i, :n] if expected[key].ndim == 3 else expected[key][i]
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        for key in ("hn", "cn"):
            if key in expected:
                np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-6)


def test_length_buckets_and_limits_shape_the_runs(model_repository):
    runtime = runtime_for(model_repository, "lstm_step")
    gate = Gate(runtime)
    batcher = AdaptiveBatcher(gate, runtime.manifest, max_sequences=4, max_cells=1000, max_queue=100)
    work = requests_of([[3], [100], [90, 70], [2, 2], [4], [3, 3, 3]], seed=1)
    gate.submit_all(batcher, work)
    # Never more than 4 sequences in one run, and long and short sequences (other buckets) are not mixed.
    assert max(gate.runs) <= 4
    assert bucket_of(3) == bucket_of(4) != bucket_of(90) == bucket_of(100)
    assert sum(gate.runs) == 10


class SlowGate(Gate):
    """A gate in front of a dear model: each run costs at least `cost(steps)` seconds per sequence, on any
    machine. It notes each run's (sequences, steps)."""

    def __init__(self, runtime: ModelRuntime, cost: Callable[[int], float]) -> None:
        super().__init__(runtime)
        self.cost, self.shapes = cost, []

    def __call__(self, inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        outputs = super().__call__(inputs, requests)
        sequences, steps = inputs["features"].shape[:2]
        self.shapes.append((sequences, steps))
        time.sleep(self.cost(steps) * sequences)
        return outputs


@pytest.mark.parametrize("max_run", [0.1, 0.0])
def test_a_merged_run_stops_growing_at_its_expected_run_time(model_repository, max_run):
    """The counts alone would put all nine queued requests in one run; the model's own runs (at least 20 ms per
    sequence here) say that more than 5 sequences would take over 0.1 s, so they run in smaller groups. The first
    run is the only one without a learnt cost, and it holds one request (the others queue behind it). With no
    bound (0), the nine queued requests share one run."""
    runtime = runtime_for(model_repository, "lstm_step")
    gate = SlowGate(runtime, lambda steps: 0.02)
    batcher = AdaptiveBatcher(gate, runtime.manifest, max_sequences=64, max_cells=1000, max_queue=100, max_run=max_run)
    results = gate.submit_all(batcher, requests_of([[4]] * 10))
    assert sum(gate.runs) == 10
    assert all(r["probabilities"].shape == (1, 4, 3) for r in results)
    assert gate.runs[0] == 1
    if max_run:
        assert max(gate.runs) <= 5  # 0.1 s / (>= 0.02 s per sequence of 4 cells) = at most 20 cells
        assert max(gate.runs) >= 2  # still merged: a bound on run time, not a count of one
        assert len(gate.runs) >= 3
    else:
        assert gate.runs == [1, 9]


def test_the_run_time_bound_is_learnt_per_length_bucket(model_repository):
    """A dear bucket (long sequences, 60 ms each against a 50 ms bound) never merges; a cheap one (short sequences)
    still merges all it finds queued: each bucket learns its own cost per padded cell from its runs."""
    runtime = runtime_for(model_repository, "lstm_step")
    gate = SlowGate(runtime, lambda steps: 0.06 if steps > 50 else 0.0)
    batcher = AdaptiveBatcher(gate, runtime.manifest, max_sequences=64, max_cells=10_000, max_queue=100, max_run=0.05)
    gate.open.set()
    for learn in requests_of([[100], [4]]):  # one run of each bucket, alone
        batcher.submit(learn)
    gate.open.clear()
    gate.runs.clear()
    gate.shapes.clear()
    work = requests_of([[4]] * 7 + [[100]] * 3)
    results = gate.submit_all(batcher, work)
    for inputs, got in zip(work, results, strict=True):
        assert got["probabilities"].shape == (1, inputs["lengths"][0], 3)
    long_runs = [n for n, steps in gate.shapes if steps > 50]
    short_runs = [n for n, steps in gate.shapes if steps <= 50]
    assert long_runs == [1, 1, 1], f"the dear requests were merged: {gate.shapes}"
    assert sum(short_runs) == 7
    assert len(short_runs) <= 2, f"the cheap requests did not share a run: {gate.shapes}"  # the first may run alone


def test_a_run_waiting_for_company_goes_once_its_run_time_is_reached(model_repository):
    """With a queue delay, a run goes as soon as no further sequence fits its learnt run time, not at the delay's
    end. The model costs at least 0.5 ms per cell here (2 ms per sequence of 4 steps); 9.5 ms holds 4 such
    sequences (16-18 cells), not 5 (20)."""
    runtime = runtime_for(model_repository, "lstm_step")
    gate = SlowGate(runtime, lambda steps: 0.002)
    delay = 20.0
    batcher = AdaptiveBatcher(
        gate, runtime.manifest, max_sequences=64, max_cells=1000, max_queue=100, max_queue_delay=delay, max_run=0.0095
    )
    gate.open.set()
    started = time.monotonic()
    try:
        batcher.submit(requests_of([[4] * 64])[0])  # full by its count: goes at once, and teaches the cost
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(batcher.submit, requests_of([[4]] * 4, seed=2)))
    finally:
        batcher.stop()
    assert time.monotonic() - started < delay / 2
    assert gate.runs == [64, 4]
    assert all(r["probabilities"].shape == (1, 4, 3) for r in results)


@pytest.mark.parametrize("name", ["BATCH_MAX_RUN_MS", "BATCH_MAX_QUEUE_DELAY_MS"])
def test_batch_times_must_not_be_negative(name):
    assert Settings.from_mapping({name: "0"}) is not None  # 0 is allowed: no bound, no wait
    with pytest.raises(ValueError, match=f"SEQSERVE_{name} must be >= 0, got -1"):
        Settings.from_mapping({name: "-1"})


def test_full_queue_is_refused_at_once(model_repository):
    runtime = runtime_for(model_repository, "lstm_step")
    gate = Gate(runtime)
    rejected: list[int] = []
    batcher = AdaptiveBatcher(
        gate,
        runtime.manifest,
        max_sequences=1,
        max_cells=1000,
        max_queue=2,
        observer=BatchObserver(rejected=lambda: rejected.append(1)),
    )
    work = requests_of([[3]] * 4)
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(batcher.submit, w) for w in work[:3]]  # one running (held), two queued
            try:
                wait_until(lambda: batcher.queued == 2, "two requests queued behind the held run")
                with pytest.raises(Overloaded) as refused:
                    batcher.submit(work[3])
            finally:
                gate.open.set()
            for f in futures:
                f.result(timeout=30)
    finally:
        batcher.stop()
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    assert rejected == [1]


def test_queue_delay_gathers_company(model_repository):
    """A run that finds the model free waits for company: requests that arrive while it waits join it, and once
    the run is full it goes at once, without waiting out the delay. The delay is far longer than the test, so
    a slow machine cannot make the company arrive too late."""
    runtime = runtime_for(model_repository, "lstm_step")
    sizes: list[int] = []
    delay = 60.0
    batcher = AdaptiveBatcher(
        runtime.run,
        runtime.manifest,
        max_sequences=3,
        max_cells=1000,
        max_queue=10,
        max_queue_delay=delay,
        observer=BatchObserver(batch_sequences=lambda n, _: sizes.append(n)),
    )
    work = requests_of([[4], [4], [4]])
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(batcher.submit, work[0])
            wait_until(lambda: batcher.queued == 1, "the first request queued")
            time.sleep(0.2)
            assert not first.done()
            assert batcher.queued == 1  # it holds the model, waiting for company
            company = [pool.submit(batcher.submit, w) for w in work[1:]]
            results = [f.result(timeout=30) for f in [first, *company]]
    finally:
        batcher.stop()
    assert sizes == [3]
    assert time.monotonic() - started < delay
    assert all(r["probabilities"].shape == (1, 4, 3) for r in results)


def test_a_run_that_is_not_full_waits_out_the_delay(model_repository):
    runtime = runtime_for(model_repository, "lstm_step")
    sizes: list[int] = []
    batcher = AdaptiveBatcher(
        runtime.run,
        runtime.manifest,
        max_sequences=8,
        max_cells=1000,
        max_queue=10,
        max_queue_delay=0.3,
        observer=BatchObserver(batch_sequences=lambda n, _: sizes.append(n)),
    )
    started = time.perf_counter()
    try:
        result = batcher.submit(requests_of([[4]])[0])
    finally:
        batcher.stop()
    assert time.perf_counter() - started >= 0.3
    assert sizes == [1]
    assert result["probabilities"].shape == (1, 4, 3)


def test_overloaded_server_answers_503_with_retry_after(model_repository, tmp_path):
    server = start_server(
        model_repository, tmp_path / "log", workers=1, threads=16, batch_max_queue=1, batch_max_sequences=1
    )
    heavy = {"sequences": np.random.default_rng(0).normal(size=(8, 1500, 6)).round(3).tolist()}
    try:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: server.post("/v1/models/gru_last/predict", heavy), range(12)))
    finally:
        server.stop()
    statuses = [r.status_code for r in responses]
    assert 200 in statuses
    assert 503 in statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert set(statuses) <= {200, 503}


def test_batching_is_configured_per_model(make_app, model_repository, tmp_path):
    """`REPOSITORY/NAME/config.json` overrides the server's batching defaults for that model, like Triton's
    config.pbtxt; a bad one fails that model's versions with the reason, and nothing else."""
    import shutil

    import orjson

    from tests.service.test_loading import ONE, settled

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    (repo / "lstm_step" / "config.json").write_bytes(
        orjson.dumps({"batching": {"max_sequences": 4, "max_queue_delay_ms": 2.5, "max_run_ms": 0}})
    )
    (repo / "gru_last" / "config.json").write_bytes(orjson.dumps({"batching": {"max_queue": 0, "colour": "red"}}))
    app = make_app(repo, batch_max_queue=99)
    report = settled(app)
    batching = app.get("/v1/models/lstm_step").json()["versions"][0]["batching"]
    assert batching == {
        "enabled": True,
        "max_sequences": 4,
        "max_cells": 64 * 512,
        "max_queue_delay_ms": 2.5,
        "max_run_ms": 0,
        "max_queue": 99,
    }
    assert app.get("/v1/models/gru_last").json()["versions"][0].get("batching") is None  # failed: no policy
    reason = report["models"]["gru_last"][0]["reason"]
    assert "gru_last/config.json" in reason
    assert "batching.max_queue: Must be greater than or equal to 1" in reason
    assert "batching.colour: Unknown field" in reason
    assert app.post("/v1/models/lstm_step/predict", ONE).status_code == 200
