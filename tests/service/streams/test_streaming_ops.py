"""What operators see of streams: a version whose state inputs are wired wrong is refused at load (the guard Triton
lacks against swapped h and c), and /metrics counts stream requests and the batches they merge into."""

from __future__ import annotations

import dataclasses
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import onnx

from modelrepo import manifest as manifests
from tests.service.conftest import start_server
from tests.service.streams.conftest import sequence
from tests.service.test_ops import samples


def swap_state_inputs(folder) -> None:
    """Rename the graph's h0 and c0 into each other (what a mixed-up export does), keeping the manifest's checksums
    right so that only the wiring check can catch it."""
    path = folder / "model.onnx"
    model = onnx.load(str(path))
    names = {"h0": "c0", "c0": "h0"}
    graph = model.graph
    for value in [*graph.input, *graph.initializer]:
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
    onnx.save(model, str(path))
    manifest = manifests.read(folder)
    manifests.write(folder, dataclasses.replace(manifest, files=manifests.file_entries(folder)))


def test_swapped_state_inputs_are_refused_at_load(stream_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(stream_repository, repo)
    swap_state_inputs(repo / "lstm2_last" / "1")
    server = start_server(repo, tmp_path / "log", wait_ready=False, workers=1)
    try:
        deadline = time.monotonic() + 60
        while (report := server.get("/ready").json())["models"].get("lstm2_last", [{}])[0].get("state") != "failed":
            assert time.monotonic() < deadline, report
            time.sleep(0.2)
        reason = report["models"]["lstm2_last"][0]["reason"]
        assert "state wiring check failed" in reason
        assert "are h and c swapped?" in reason
        assert report["models"]["lstm1_step"][0]["state"] == "ready"  # the others serve
        assert "state wiring check failed" in server.logs()
    finally:
        server.stop()


def test_metrics_count_streams_and_their_merged_batches(stream_repository, tmp_path):
    # One worker and a short queue delay, so that concurrent stream requests merge into shared runs.
    server = start_server(stream_repository, tmp_path / "log", workers=1, batch_max_queue_delay_ms="30")
    try:
        states = [
            server.post("/v1/models/gru2_step/stream", {"timesteps": sequence(2, i).tolist()}).json()["state"]
            for i in range(12)
        ]
        before = samples(server)
        with ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(
                    lambda s: server.post("/v1/models/gru2_step/stream", {"timesteps": [[0.1] * 6], "state": s}),
                    states,
                )
            )
        assert [a.status_code for a in answers] == [200] * 12
        after = samples(server)

        def delta(name: str, **labels: str) -> float:
            key = (name, frozenset(labels.items()))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("seqserve_stream_requests_total", model="gru2_step", protocol="v1") == 12
        runs = delta("seqserve_batch_size_sequences_count", model="gru2_step", stateful="true")
        sequences = delta("seqserve_batch_size_sequences_sum", model="gru2_step", stateful="true")
        assert sequences == 12
        assert runs < 12  # some stream requests shared a run
    finally:
        server.stop()
