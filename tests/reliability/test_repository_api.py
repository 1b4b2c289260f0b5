"""Models managed at runtime: the V2 repository extension, applied by every worker, behind an admin token; a swap
under load without a failed request or a mixed batch; broken versions refused while the serving one stays."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bench.traffic import Traffic, percentile, running, statuses
from modelrepo import layout
from service.app import close_app, create_app, resources
from service.batching import AdaptiveBatcher
from service.control import Desired, Policy
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.runtime import ModelRuntime
from service.settings import Settings
from tests.reliability.conftest import (
    AUTH,
    FEATURES,
    PREDICT,
    TOKEN,
    answered_version,
    publish,
    serving_repository,
    start_server,
    wait_until,
    worker_pids,
)

ONE = {"sequences": FEATURES[:1].tolist()}


def test_the_api_is_off_without_a_token_and_checks_the_token_in_constant_time(versions_repository, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    off = create_app({"model_repository": str(repository), "workers": 1})
    try:
        refused = off.test_client().post("/v2/repository/index")
        assert refused.status_code == 403
        assert "set SEQSERVE_ADMIN_TOKEN" in refused.json["error"]
    finally:
        close_app(off)
    on = create_app(
        {"model_repository": str(repository), "workers": 1, "admin_token": TOKEN, "state_dir": str(tmp_path)}
    )
    try:
        client = on.test_client()
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            denied = client.post("/v2/repository/index", headers=headers)
            assert denied.status_code == 401, headers
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in denied.get_data(as_text=True)
        assert resources(on).plane.wait_loaded(60)
        allowed = client.post("/v2/repository/index", headers=AUTH)
        assert allowed.status_code == 200
        assert allowed.json == [{"name": "lstm_step", "version": "1", "state": "READY"}]
        assert TOKEN not in repr(resources(on).settings)
    finally:
        close_app(on)


def test_load_and_unload_reach_every_worker(versions_repository, tmp_path):
    """tritonclient's own calls; each worker acknowledges through the state folder before the call returns."""
    repository = serving_repository(versions_repository, tmp_path / "repo")
    state = tmp_path / "state"
    server = start_server(repository, tmp_path / "log", admin_token=TOKEN, state_dir=state)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        publish(versions_repository, repository, 2)
        index = client.get_model_repository_index(headers=AUTH)
        assert index == [
            {"name": "lstm_step", "version": "1", "state": "READY"},
            {
                "name": "lstm_step",
                "version": "2",
                "state": "UNAVAILABLE",
                "reason": "in the repository, not loaded yet: POST .../load loads it",
            },
        ]
        client.load_model("lstm_step", headers=AUTH)
        assert acknowledged(state, server) == {"1": "ready", "2": "ready"}
        answers = {requests.post(f"{server.url}/v1/models/lstm_step/predict", json=ONE).json()["model_version"]}
        assert answers == {"2"}  # the newest ready version answers unversioned requests
        client.unload_model("lstm_step", headers=AUTH)
        assert acknowledged(state, server) == {}
        gone = requests.post(f"{server.url}/v1/models/lstm_step/predict", json=ONE)
        assert gone.status_code == 404
        assert client.get_model_repository_index(headers=AUTH) == [
            {"name": "lstm_step", "version": v, "state": "UNAVAILABLE", "reason": "unloaded"} for v in ("1", "2")
        ]
        with pytest.raises(InferenceServerException, match="unknown"):
            client.load_model("unknown", headers=AUTH)
        config = json.dumps({"version_policy": {"specific": {"versions": ["1"]}}})  # protobuf's JSON: int64 as string
        client.load_model("lstm_step", headers=AUTH, config=config)
        assert acknowledged(state, server) == {"1": "ready"}
        assert server.get("/ready").status_code == 200
    finally:
        assert server.stop() == 0


def acknowledged(state: Path, server) -> dict[str, str]:
    """lstm_step's version states, the same in every worker's acknowledgement (one per live worker)."""
    acks = [json.loads(p.read_text()) for p in state.glob("ack-*.json")]
    assert sorted(a["pid"] for a in acks) == worker_pids(server)
    views = [{v: s["state"] for v, s in a["models"].get("lstm_step", {}).items()} for a in acks]
    assert all(view == views[0] for view in views), views
    return views[0]


def test_a_swap_under_steady_load_fails_no_request_and_mixes_no_versions(versions_repository, reference, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    server = start_server(repository, tmp_path / "log", admin_token=TOKEN)
    traffic = Traffic(server.url, PREDICT, clients=4, limit=20_000, duration=90, keep_bodies=True)
    try:
        with running(traffic):
            traffic.wait_for(50)
            publish(versions_repository, repository, 2)
            loaded = requests.post(f"{server.url}/v2/repository/models/lstm_step/load", headers=AUTH, timeout=60)
            assert loaded.status_code == 200, loaded.text
            before_unload = traffic.count()
            traffic.wait_for(before_unload + 50)
            unload = {"parameters": {"versions": [1]}}
            unloaded = requests.post(
                f"{server.url}/v2/repository/models/lstm_step/unload", json=unload, headers=AUTH, timeout=60
            )
            assert unloaded.status_code == 200, unloaded.text
            after = time.monotonic()
            traffic.wait_for(traffic.count() + 50)
    finally:
        logs = server.logs()
        assert server.stop() == 0
    outcomes = traffic.outcomes
    assert [o for o in outcomes if o.status != 200] == []
    versions = [answered_version(o, reference) for o in outcomes]  # every answer is its version's own numbers
    print(
        f"swap under load: {statuses(outcomes)}, by version {dict(Counter(versions))}, "
        f"p99 {percentile([o.seconds for o in outcomes], 99) * 1e3:.0f} ms"
    )
    assert set(versions) == {"1", "2"}
    assert {v for o, v in zip(outcomes, versions, strict=True) if o.started > after} == {"2"}
    assert logs.count("model lstm_step/1 unloaded (not selected by the model's version policy)") == 2  # each worker


def test_an_unloaded_version_still_answers_the_requests_that_hold_it(versions_repository, tmp_path):
    """A request that looked version 1 up just before it was unloaded is answered by it, not refused."""
    repository = serving_repository(versions_repository, tmp_path / "repo", versions=(1, 2))
    plane = DataPlane(Settings.from_mapping({"model_repository": str(repository), "workers": 1}), Metrics())
    try:
        plane.sync()
        held = plane.get("lstm_step", 1)
        plane.sync(Desired(1, {"lstm_step": Policy("specific", (2,))}))
        assert [v.version for v in plane.versions("lstm_step")] == [2]
        inputs = {"features": FEATURES, "lengths": np.array([12, 12])}
        np.testing.assert_array_equal(
            plane.infer(held, inputs)["probabilities"], held.runtime.run(inputs)["probabilities"]
        )
    finally:
        plane.stop()


def test_a_drain_waits_for_the_running_batch_and_refuses_nothing(versions_repository):
    entry = layout.VersionDir("lstm_step", 1, versions_repository / "lstm_step" / "1")
    manifest = layout.read_version(entry)
    runtime = ModelRuntime(entry.path, manifest, "cpu", 1)
    gate = threading.Event()

    def held_run(inputs: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        gate.wait(10)
        return runtime.run(inputs, requests)

    batcher = AdaptiveBatcher(held_run, manifest, max_sequences=8, max_cells=4096, max_queue=4)
    inputs = {"features": FEATURES, "lengths": np.array([12, 12])}
    with ThreadPoolExecutor(2) as pool:
        running_request = pool.submit(batcher.submit, inputs)
        wait_until(lambda: batcher.busy, timeout=10)
        assert batcher.drain(0.05) is False  # the run is held: not drained
        draining = pool.submit(batcher.drain, 10)
        assert not draining.done()
        gate.set()
        assert draining.result(10) is True
        assert running_request.result(10)["probabilities"].shape == (2, 12, 3)
    assert not batcher.busy
    assert batcher.submit(inputs)["probabilities"].shape == (2, 12, 3)  # drained, not stopped


BROKEN = ("truncated", "checksum", "manifest_features", "foreign_graph")


def break_version(folder: Path, how: str, foreign: Path) -> str:
    """Damage a published version one way; the reason the loader must give."""
    onnx_file, manifest_file = folder / "model.onnx", folder / "manifest.json"
    if how == "truncated":
        onnx_file.write_bytes(onnx_file.read_bytes()[:-100])
        return "does not match the manifest"
    if how == "checksum":
        data = bytearray(onnx_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx_file.write_bytes(bytes(data))
        return "does not match the manifest"
    manifest = json.loads(manifest_file.read_text())
    if how == "manifest_features":  # self-consistent manifest for 5 features; the graph takes 6
        manifest["feature_names"] = manifest["feature_names"][:5]
        manifest["model"]["input_dim"] = 5
        manifest["onnx"]["inputs"][0]["shape"][2] = 5
        manifest_file.write_text(json.dumps(manifest))
        return "input 'features' axis 2 is 6 in the graph, 5 in the manifest (feature count)"
    shutil.copy(foreign, onnx_file)  # another model's graph, re-hashed: the checksum passes, the inputs do not
    data = onnx_file.read_bytes()
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest_file.write_text(json.dumps(manifest))
    return "graph inputs ['features', 'lengths'], manifest inputs ['c0', 'features', 'h0', 'lengths']"


def test_broken_versions_are_refused_with_the_reason_and_the_serving_one_stays(
    versions_repository, model_repository, tmp_path
):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    server = start_server(repository, tmp_path / "log", admin_token=TOKEN)
    load = f"{server.url}/v2/repository/models/lstm_step/load"
    swap = {"parameters": {"config": json.dumps({"version_policy": {"specific": {"versions": [2]}}})}}
    try:
        for how in BROKEN:
            shutil.rmtree(repository / "lstm_step" / "2", ignore_errors=True)
            reason = break_version(
                publish(versions_repository, repository, 2), how, model_repository / "gru_last" / "1" / "model.onnx"
            )
            refused = requests.post(load, json=swap, headers=AUTH, timeout=60)  # a swap to 2: 1 must stay
            assert refused.status_code == 400, how
            message = refused.json()["error"]
            assert message.count(reason) == 2, message  # both workers refused it, and say why
            assert "keeps serving versions [1]" in message
            report = server.get("/ready")
            assert report.status_code == 200  # a broken new version does not take the service out of rotation
            states = {v["version"]: v for v in report.json()["models"]["lstm_step"]}
            assert states[1]["state"] == "ready"
            assert states[2]["state"] == "failed"
            assert reason in states[2]["reason"]
            index = requests.post(f"{server.url}/v2/repository/index", headers=AUTH).json()
            assert index[0] == {"name": "lstm_step", "version": "1", "state": "READY"}
            assert index[1]["state"] == "UNAVAILABLE"
            assert reason in index[1]["reason"]
            print(f"{how}: 400 {message}")
            answered = [server.post("/v1/models/lstm_step/predict", ONE) for _ in range(4)]
            assert {a.json()["model_version"] for a in answered} == {"1"}
        failures = [json.loads(line) for line in server.logs().splitlines() if "failed to load" in line]
        assert len(failures) == 2 * len(BROKEN)
        assert all(f["level"] == "ERROR" for f in failures)
    finally:
        assert server.stop() == 0


def test_bad_repository_requests_get_400_with_the_reason(versions_repository, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    app = create_app(
        {"model_repository": str(repository), "workers": 1, "admin_token": TOKEN, "state_dir": str(tmp_path)}
    )
    try:
        client = app.test_client()
        assert resources(app).plane.wait_loaded(60)
        cases = {
            ("load", orjson.dumps({"parameters": {"config": "{"}})): "parameters.config: not valid JSON",
            ("load", orjson.dumps({"parameters": {"config": '{"max_batch_size": 8}'}})): "only version_policy",
            ("load", orjson.dumps({"parameters": {"config": '{"version_policy": {"latest": {}}}'}})): "expected",
            ("load", orjson.dumps({"parameters": {"config": '{"version_policy": {"specific": {"versions": [9]}}}'}})): (
                "versions [9] are not in the repository"
            ),
            ("load", orjson.dumps({"parameters": {"file:1/model.onnx": "AAAA"}})): "file overrides are not supported",
            ("unload", orjson.dumps({"parameters": {"versions": [0]}})): "Must be greater than or equal to 1",
            ("unload", orjson.dumps({"parameters": {"unload_dependents": "yes"}})): "Not a valid boolean",
            ("unload", b"[1]"): "expected a JSON object",
        }
        for (action, body), message in cases.items():
            answer = client.post(f"/v2/repository/models/lstm_step/{action}", data=body, headers=AUTH)
            assert answer.status_code == 400, (action, body)
            assert message in answer.json["error"], answer.json
        assert client.post("/v2/repository/models/..%2Fetc/load", headers=AUTH).status_code in (400, 404)
        assert client.post("/v2/repository/models/nope/unload", headers=AUTH).status_code == 404
        assert client.post("/v2/repository/index", json={"ready": "yes"}, headers=AUTH).status_code == 400
    finally:
        close_app(app)
