"""A real `redis-server` (Debian package; `make test` installs it) on 127.0.0.1 for the tests.

`start_redis(folder)` runs one without persistence (`--save '' --appendonly no`, its working folder and log in
`folder`) on a free port, waits until it answers PING, and returns a `RedisServer` whose `stop()` ends it by PID.
A missing binary is an error, not a skip: the tests of the Redis store must run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.processes import free_port, stop

STARTUP_TIMEOUT_S = 20.0


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> int:
        return stop(self.process, timeout=10)


def start_redis(folder: Path, attempts: int = 3) -> RedisServer:
    """Start redis-server on a free port; retried on a new port when another process took the port meanwhile."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make test`, or `apt-get install -y redis-server`")
    folder.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        server = _launch(binary, folder, free_port(), attempt)
        if _wait_ready(server):
            return server
        server.stop()
    raise RuntimeError(f"redis-server did not start after {attempts} attempts:\n{server.log.read_text()}")


def _launch(binary: str, folder: Path, port: int, attempt: int) -> RedisServer:
    log = folder / f"redis-{attempt}.log"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder), "--daemonize", "no", "--logfile", str(log)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    return RedisServer(port, process, log)


def _wait_ready(server: RedisServer) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with server.client() as client:
        while time.monotonic() < deadline and server.process.poll() is None:
            try:  # ours, not another program that holds the port (then ours exits: bind failed)
                return client.info("server")["process_id"] == server.process.pid
            except redis.ConnectionError:
                time.sleep(0.05)
    return False
