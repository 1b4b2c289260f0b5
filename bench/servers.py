"""Server processes the benchmark starts: each in its own session (process group), bound to 127.0.0.1 on a port
in 18000-18999, logging to a file, and ended by its process group id however the run ends."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("bench.servers")

PORTS = range(18000, 19000)


class ServerFailed(RuntimeError):
    """A server did not become ready: the message holds the reason and the log's last lines."""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out free loopback ports from 18000-18999, starting at `first`, never the same one twice."""

    def __init__(self, first: int = 18100) -> None:
        self._next = first

    def take(self) -> int:
        while self._next in PORTS:
            port, self._next = self._next, self._next + 1
            if port_is_free(port):
                return port
        raise RuntimeError("no free port left in 18000-18999")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group (a server and all its workers)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(12) stime(13)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    ready_path: str
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen | None = None

    def cpu_seconds(self) -> float | None:
        return group_cpu_seconds(self.process.pid) if self.process is not None else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s on port %d: %s", self.name, self.port, " ".join(self.argv))
        with self.log_file.open("w") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float, consecutive: int = 10) -> None:
        """Ready after `consecutive` 200s in a row, each on a new connection: with several worker processes
        each answers for itself, and one ready worker says nothing about the others."""
        deadline, streak = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited ({self.returncode()}) before it was ready{self.log_tail()}")
            streak = streak + 1 if self._ready() else 0
            if streak >= consecutive:
                return
            time.sleep(0.05 if streak else 0.25)
        raise ServerFailed(f"{self.name} not ready after {timeout:.0f} s{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.ready_path, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 8) -> str:
        text = self.log_file.read_text(errors="replace").splitlines()[-lines:] if self.log_file.is_file() else []
        return "".join(f"\n    {line}" for line in text) if text else ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after `grace` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0f s: SIGKILL", self.name, grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived their master, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
