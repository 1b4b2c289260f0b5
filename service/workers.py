"""Readiness across the worker processes of one server.

Each gunicorn worker loads its own models, and a load balancer's `/ready` probe reaches one worker at random: a
worker that is ready must not say so for the whole server while its siblings still load (their requests would
get 503s). Each worker publishes its own readiness as a file `worker-<pid>` in a folder shared by the server
(`SEQSERVE_STATE_DIR`, set up by gunicorn.conf.py, which also removes a dead worker's file); the server is ready
when at least `workers` files say so. Without the folder (the app outside gunicorn) there is nothing to check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PREFIX = "worker-"


class WorkerBoard:
    def __init__(self, folder: str, expected: int) -> None:
        self.folder = Path(folder) if folder else None
        self.expected = max(1, expected)

    def publish(self, ready: bool) -> None:
        if self.folder is None:
            return
        target = self.folder / f"{PREFIX}{os.getpid()}"
        staging = target.with_suffix(".tmp")
        staging.write_text("1" if ready else "0")
        staging.replace(target)  # atomic: a reader sees the old or the new state

    def status(self) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        ready = 0
        for entry in self.folder.glob(f"{PREFIX}*"):
            if entry.suffix:
                continue
            try:
                ready += entry.read_text() == "1"
            except OSError:  # a worker that just exited
                continue
        return {"ready": ready, "expected": self.expected}
