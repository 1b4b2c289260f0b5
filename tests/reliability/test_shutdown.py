"""SIGTERM under load drains: every request the server accepted is answered, the rest are refused before any
of them is read, and the server is gone within the graceful timeout. Also when the SIGTERM lands while a worker
is still booting."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from bench.traffic import Traffic, running, statuses
from tests.reliability.conftest import (
    SLOW,
    logged_requests,
    serving_repository,
    start_server,
    wait_until,
    worker_pids,
)

GRACEFUL = 30


def test_sigterm_under_load_answers_every_accepted_request(versions_repository, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    server = start_server(repository, tmp_path / "log", workers=2, graceful_timeout=GRACEFUL)
    traffic = Traffic(server.url, SLOW, clients=6, limit=50_000, duration=90, prefix="drain")
    with running(traffic):
        traffic.wait_for(60)
        terminated = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(GRACEFUL + 10)
        stopped = time.monotonic()
    outcomes, logs = traffic.outcomes, server.logs()
    logged = logged_requests(logs, "drain-")
    answered = {o.request_id: o for o in outcomes if o.status is not None}
    in_flight = [o for o in outcomes if o.started < terminated < o.started + o.seconds]
    refused = [o for o in outcomes if o.status is None]
    print(
        f"SIGTERM -> exit {code} in {stopped - terminated:.2f} s; {len(outcomes)} requests: {statuses(outcomes)}; "
        f"{len(in_flight)} in flight at SIGTERM, {len(logged)} answered by the app"
    )
    assert code == 0
    assert stopped - terminated < GRACEFUL
    assert "graceful timeout" not in logs
    assert {o.status for o in answered.values()} == {200}
    assert in_flight
    assert all(o.status == 200 for o in in_flight)  # what was running when the signal came was finished
    # Every request the app handled reached its client; what failed was never read by the app (refused or reset
    # in the listen backlog once the workers closed their listeners), and was sent after the signal.
    assert set(logged) <= set(answered)
    assert all(o.request_id not in logged and o.started >= terminated for o in refused)


def test_sigterm_while_a_worker_boots_stops_within_the_graceful_timeout(versions_repository, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    server = start_server(repository, tmp_path / "log", workers=2, graceful_timeout=GRACEFUL)
    before = set(worker_pids(server))
    os.kill(min(before), signal.SIGKILL)
    wait_until(lambda: set(worker_pids(server)) - before, timeout=30, interval=0.005)  # the replacement is forked
    terminated = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(GRACEFUL + 10)
    except subprocess.TimeoutExpired:
        server.stop()
        raise
    took = time.monotonic() - terminated
    print(f"SIGTERM during a worker's boot -> exit {code} in {took:.2f} s")
    assert code == 0
    assert took < GRACEFUL - 5  # the replacement heard it: not kept alive until the master kills it
    assert "graceful timeout" not in server.logs()


def test_a_stopped_server_leaves_no_temporary_folders(versions_repository, tmp_path, monkeypatch):
    """The Prometheus and state folders gunicorn.conf.py makes for a server are removed when it stops; one it was
    given is left alone."""
    temp, given = tmp_path / "tmp", tmp_path / "given-state"
    temp.mkdir()
    given.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))

    def ours() -> list[str]:  # onnxruntime keeps a file of its own there (.ses)
        return sorted(p.name.rsplit("-", 1)[0] for p in temp.glob("seqserve-*"))

    repository = serving_repository(versions_repository, tmp_path / "repo")
    server = start_server(repository, tmp_path / "log", workers=2)
    assert ours() == ["seqserve-metrics", "seqserve-state"]
    assert server.stop() == 0
    assert ours() == []
    server = start_server(repository, tmp_path / "log2", workers=2, state_dir=given)
    assert ours() == ["seqserve-metrics"]
    assert server.stop() == 0
    assert ours() == []
    assert (given / "state.key").exists()  # what a given state folder holds outlives the server
