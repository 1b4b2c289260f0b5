"""Two replicas behind the shipped nginx, under steady load; one replica killed with SIGKILL (all its processes at
once, as a lost machine): no request fails, because nginx passes what the dead replica cannot answer to the live
one (`proxy_next_upstream error timeout http_502 http_503 non_idempotent`: predictions have no side effects)."""

from __future__ import annotations

import os
import re
import signal
import time

from bench.traffic import Traffic, running, statuses
from tests.processes import free_port
from tests.reliability.conftest import (
    PREDICT,
    logged_requests,
    serving_repository,
    spawn_replica,
    wait_for,
    wait_until,
)
from tests.reliability.proxy import REPLICA_HOSTS, SERVICE_NAME, DnsServer, start_nginx

RETRIED = re.compile(r"upstream=([0-9.:]+(?:, [0-9.:]+)+) upstream_status=([0-9, ]+)")


def test_a_replica_killed_behind_nginx_costs_no_request(versions_repository, tmp_path):
    repository = serving_repository(versions_repository, tmp_path / "repo")
    port = free_port(*REPLICA_HOSTS)
    replicas = [spawn_replica(repository, tmp_path / f"{host}.log", host, port) for host in REPLICA_HOSTS]
    dns = DnsServer(SERVICE_NAME, REPLICA_HOSTS)
    proxy = None
    try:
        for replica in replicas:
            wait_for(replica, "/ready")
        proxy = start_nginx(tmp_path / "nginx", dns.port, port)
        traffic = Traffic(proxy.url, PREDICT, clients=4, limit=20_000, duration=90, prefix="via")
        with running(traffic):
            wait_until(lambda: all(logged_requests(r.logs(), "via-") for r in replicas), timeout=30)  # both serve
            killed = time.monotonic()
            os.killpg(replicas[0].process.pid, signal.SIGKILL)
            replicas[0].process.wait(10)
            traffic.wait_for(traffic.count() + 400)
        nginx_log = proxy.logs()
    finally:
        for replica in replicas:
            replica.stop()
        if proxy is not None:
            proxy.stop()
        dns.stop()
    outcomes = traffic.outcomes
    retried = RETRIED.findall(nginx_log)
    after = [o for o in outcomes if o.started > killed]
    print(
        f"{len(outcomes)} requests through nginx, {len(after)} after the kill: {statuses(outcomes)}; "
        f"{len(retried)} passed on by nginx, e.g. {retried[:1]}"
    )
    assert statuses(outcomes) == {"200": len(outcomes)}
    assert len(after) >= 400
    assert dns.queries >= 1  # nginx found the replicas through the resolver, as in compose
    # nginx did see the dead replica fail and passed those requests on: attempts on both addresses, a 200 at last.
    assert retried
    assert all(hosts.startswith(REPLICA_HOSTS[0]) and codes.strip().endswith("200") for hosts, codes in retried)
    assert len(logged_requests(replicas[1].logs(), "via-")) >= len(after)
