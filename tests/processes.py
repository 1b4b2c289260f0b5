"""Processes the tests start on loopback (gunicorn, redis-server, nginx): a free port to give them, and stopping
them by PID."""

from __future__ import annotations

import signal
import socket
import subprocess


def free_port(*hosts: str) -> int:
    """A port free on every one of `hosts` (default 127.0.0.1; replicas listen on one port on different loopback
    addresses)."""
    hosts = hosts or ("127.0.0.1",)
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no port free on all of {hosts}")


def stop(process: subprocess.Popen[bytes], timeout: float, signum: int = signal.SIGTERM) -> int:
    """Send `signum`, wait up to `timeout` s, then kill; the exit status."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
