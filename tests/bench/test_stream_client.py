"""The stream load generator against a real gunicorn for a second: every protocol's requests get the answers
onnxruntime gives in-process, a pool of processes keeps each stream's step count and ends its V2 sequences, a
wrong step count is an error, and the age windows are read from the streams' own progress."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.apps.onnx_model import SequenceSession
from bench.servers import group_cpu_seconds
from bench.stream_client import Answer, BadAnswer, Job, V1Stream, V2Sequence, sample, v2_binary_body
from bench.stream_load import ProcessGroupCpu, StreamPool, StreamRun
from tests.service.conftest import Server, start_server

MODEL = "lstm_step"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.pipeline import export_run
    from tests.export.conftest import write_run

    root = tmp_path_factory.mktemp("bench-streams")
    run = write_run(root / "run", cell="lstm", num_layers=1, head="per_timestep")
    export_run(run, root / "repository", MODEL)
    return root / "repository"


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(repository, tmp_path_factory.mktemp("bench-streams-server") / "gunicorn.log")
    yield server
    assert server.stop() == 0, server.logs()


def port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("protocol", "chunk", "window"),
    [("v1-stream", 3, 3), ("v2-sequence", 2, 2), ("v1-window", 2, 5), ("v2-window", 1, 1)],
)
def test_every_protocol_gets_the_answers_of_onnxruntime(server, repository, protocol, chunk, window):
    session = SequenceSession(repository / MODEL / "1" / "model.onnx")
    data, samples = asyncio.run(sample(Job(protocol, MODEL, chunk, window, port(server), seed=1), requests=3))
    assert len(samples) == 3
    for got in samples:
        start, stop = got.seen
        assert stop - start == (window if protocol.endswith("window") else stop)  # streams: all since the start
        expected = session.probabilities(data.timesteps(start, stop)[None])[0, -chunk:]
        np.testing.assert_allclose(got.probabilities, expected, atol=1e-5, rtol=0)


def test_a_pool_keeps_every_streams_count_and_ends_its_sequences(server):
    pool = StreamPool(2)
    try:
        job = Job("v2-sequence", MODEL, 2, 2, port(server), seed=7)
        out = pool.run(job, 5, 1.0, lambda: group_cpu_seconds(server.process.pid))
    finally:
        pool.close()
    assert out.errors == 0, out.first_errors
    assert sorted(np.unique(out.stream)) == [0, 1, 2, 3, 4]
    for s in range(5):
        steps = out.step[out.stream == s][np.argsort(out.done_at[out.stream == s])]
        # the first (uncounted) request brought the stream to 2 timesteps; each counted one adds 2
        assert steps.tolist() == list(range(4, 4 + 2 * len(steps), 2))
    result = out.result()
    assert result.requests == np.count_nonzero(out.done_at <= out.end_at) > 0  # not those still in flight at the end
    assert result.cpu_s is not None
    assert result.cpu_s > 0
    ended = V2Sequence(MODEL, 2, 2, port(server), seed=7).new_stream(0)  # the id stream 0 of that run had
    body, head = v2_binary_body(np.zeros((1, 6), "<f4").tobytes(), 1, {"sequence_id": ended.sequence_id})
    answer = server.session.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        data=body,
        headers={"Inference-Header-Content-Length": head.split(b": ")[1].strip().decode()},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert "is unknown (never started, or ended)" in answer.json()["error"], answer.text


def test_an_answer_with_the_wrong_step_count_is_an_error():
    protocol = V1Stream(MODEL, 2, 2, 18000, seed=0)
    stream = protocol.new_stream(0)
    stream.step = 6
    with pytest.raises(BadAnswer, match="the server counts 7 timesteps, the stream sent 8"):
        protocol.answered(stream, Answer(200, {}, orjson.dumps({"steps": 7, "state": "t"})))
    with pytest.raises(BadAnswer, match="HTTP 503"):
        protocol.answered(stream, Answer(503, {}, b"busy"))
    protocol.answered(stream, Answer(200, {}, orjson.dumps({"steps": 8, "state": "t"})))
    assert (stream.step, stream.token) == (8, b'"t"')


def test_age_windows_are_cut_by_the_streams_own_ages():
    """Four streams of 10 timesteps per request, two of them twice as fast as the others."""
    fast = [(t, 10 * t) for t in range(1, 7)]  # (done at, step after the request)
    slow = [(2 * t, 10 * t) for t in range(1, 4)]
    rows = [(t, step, s) for s, runs in enumerate([fast, fast, slow, slow]) for t, step in runs]
    done_at, step, stream = (np.asarray(col) for col in zip(*rows, strict=True))
    out = StreamRun(done_at, np.full(len(rows), 0.01), stream, step, 0, [], [(0.0, 0.0), (10.0, 1.0)], 0.0, 10.0)
    assert out.reach_times(20).tolist() == [2.0, 2.0, 4.0, 4.0]
    assert out.reach_times(40).tolist() == [4.0, 4.0, np.inf, np.inf]
    assert out.slowest() == 30
    window = out.result(2.0, 4.0)
    assert window.requests == 10  # fast: t = 2, 3, 4 twice; slow: t = 2, 4 twice
    assert window.cpu_s == pytest.approx(0.2)  # interpolated between the two readings
    assert out.median_step(5.0, 6.0) == 50.0  # fast: 50 and 60 twice; slow: 30 twice (at t = 6)


def test_the_cpu_of_a_process_group_is_its_members_cpu():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    burn += "print('done', flush=True)\ninput()"  # 0.3 s of CPU, then it waits
    process = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        cpu = ProcessGroupCpu([process.pid])
        assert process.stdout is not None
        assert process.stdout.readline() == b"done\n"
        used = cpu()
        assert used is not None
        assert 0.29 <= used < 5
        assert cpu.pids == [process.pid]
    finally:
        process.communicate(b"\n", timeout=30)
    assert cpu() is None  # its only member ended, and a new look in /proc finds no other
