"""A worker killed with SIGKILL under load: gunicorn replaces it, /ready is 200 again within 10 s, no request on
the other worker fails, and the replacement takes no request before its models are loaded (a 503 'no ready
version' from it would show here)."""

from __future__ import annotations

import os
import signal
import time

from bench.traffic import Traffic, running, statuses
from tests.reliability.conftest import PREDICT, serving_repository, start_server, wait_until, worker_pids

CLIENTS = 4


def test_a_killed_worker_is_replaced_and_no_request_on_the_others_fails(versions_repository, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    # A warm-up this long keeps the replacement loading for a while: time enough to take requests too early.
    server = start_server(repository, tmp_path / "log", workers=2, warmup_timesteps=5_000)
    # A new connection per request: every request is an accept(), which a replacement accepting early would win.
    traffic = Traffic(server.url, PREDICT, clients=CLIENTS, limit=50_000, duration=90, keepalive=False)
    try:
        with running(traffic):
            traffic.wait_for(100)
            before = worker_pids(server)
            victim = before[0]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            # Reaped and replaced first (gunicorn's child_exit has then removed the victim's readiness), then ready.
            pids = wait_until(lambda: replaced(worker_pids(server), victim), 30)
            wait_until(lambda: server.get("/ready").status_code == 200, 30)
            recovered = time.monotonic() - killed
            (replacement,) = set(pids) - set(before)
            served = traffic.count()
            traffic.wait_for(served + 100)  # both workers serve again
    finally:
        logs = server.logs()
        assert server.stop() == 0
    outcomes = traffic.outcomes
    failed = [o for o in outcomes if o.status != 200]
    print(f"kill -> /ready 200: {recovered:.2f} s; {len(outcomes)} requests: {statuses(outcomes)}")
    assert recovered < 10
    assert f"Worker (pid:{victim}) was sent SIGKILL" in logs
    assert f"Booting worker with pid: {replacement}" in logs
    # Only requests in flight on the killed worker may fail, and only as a lost connection: no HTTP error at all.
    assert all(o.status is None for o in failed), statuses(failed)
    assert len(failed) <= CLIENTS
    assert all(o.started < killed for o in failed)
    assert len(outcomes) - len(failed) >= 200


def replaced(pids: list[int], victim: int) -> list[int] | None:
    return pids if len(pids) == 2 and victim not in pids else None
