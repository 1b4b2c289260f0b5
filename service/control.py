"""Which model versions every worker of one server should serve, decided at runtime (Triton's explicit model
control), and how the workers learn of it.

A load or unload request reaches one gunicorn worker, but each worker has its own dataplane. So the request does not
touch its own dataplane: it writes the desired state (a `Policy` per model) with the next generation number into
`desired.json` in the server's state folder (`Settings.state_dir`), read-modify-write under an exclusive `flock`,
so that two requests in two workers cannot lose each other's change. Every worker's loader thread reads that file
every `Settings.control_interval` seconds; on a new generation it syncs its models with the repository under the new
policies (load what is selected, then drain and unload what is not) and writes `ack-<pid>.json`: the generation it
applied and the state of each of its versions. The request waits until every live worker (at least
`Settings.worker_count` of them) has acknowledged its generation, then answers from their reports.

A worker that starts later (crash respawn, SIGHUP, TTIN) reads the file before its first scan, so it comes up in the
state its siblings are in. Models the file does not name follow the repository (every version found: `all`).
gunicorn.conf.py empties the folder at server start and removes a dead worker's acknowledgement: runtime decisions
last as long as the server; what persists is the repository on disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

DESIRED_FILE = "desired.json"
LOCK_FILE = "desired.lock"
ACK_PREFIX = "ack-"
KINDS = ("all", "latest", "specific", "none")


@dataclass(frozen=True)
class Policy:
    """Which versions of one model to serve: every one in the repository, the `latest` n, `specific` ones, or none.
    `generation` is the request that set it (a worker retries a failed version when a newer request names its model).
    """

    kind: str = "all"
    versions: tuple[int, ...] = ()  # specific
    latest: int = 1  # latest
    generation: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"version policy {self.kind!r} is not one of {', '.join(KINDS)}")

    def select(self, available: list[int]) -> set[int]:
        """The versions to serve among those in the repository."""
        if self.kind == "all":
            return set(available)
        if self.kind == "latest":
            return set(sorted(available)[-self.latest :])
        if self.kind == "specific":
            return set(available) & set(self.versions)
        return set()

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "versions": list(self.versions),
            "latest": self.latest,
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Policy:
        return cls(str(raw["kind"]), tuple(int(v) for v in raw["versions"]), int(raw["latest"]), int(raw["generation"]))


@dataclass(frozen=True)
class Desired:
    generation: int = 0
    models: dict[str, Policy] = field(default_factory=dict)

    def policy(self, name: str) -> Policy:
        return self.models.get(name, Policy())

    def with_policy(self, name: str, policy: Policy) -> Desired:
        generation = self.generation + 1
        return Desired(generation, {**self.models, name: replace(policy, generation=generation)})


@dataclass(frozen=True)
class Ack:
    """One worker's report: the generation it applied and its versions' `{"state", "reason"}` per model."""

    pid: int
    generation: int
    models: dict[str, dict[str, dict[str, str]]]


class ControlFolder:
    """`desired.json` and the workers' `ack-<pid>.json` in one server's state folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def read(self) -> Desired:
        """The desired state; none written yet (or unreadable) is generation 0, every model `all`."""
        try:
            raw = orjson.loads((self.folder / DESIRED_FILE).read_bytes())
            return Desired(int(raw["generation"]), {n: Policy.from_dict(p) for n, p in raw["models"].items()})
        except FileNotFoundError:
            return Desired()

    def update(self, change: Callable[[Desired], Desired]) -> Desired:
        """Apply `change` to the desired state and write the result, under the folder's lock."""
        with self._locked():
            desired = change(self.read())
            payload = {"generation": desired.generation, "models": {n: p.to_dict() for n, p in desired.models.items()}}
            _write_atomic(self.folder / DESIRED_FILE, orjson.dumps(payload))
        return desired

    def acknowledge(self, generation: int, models: dict[str, dict[str, dict[str, str]]]) -> None:
        payload = {"pid": os.getpid(), "generation": generation, "models": models}
        _write_atomic(self.folder / f"{ACK_PREFIX}{os.getpid()}.json", orjson.dumps(payload))

    def acks(self) -> list[Ack]:
        """The acknowledgements of live workers (a dead worker's file may linger until the master reaps it)."""
        found = []
        for path in self.folder.glob(f"{ACK_PREFIX}*.json"):
            try:
                raw = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):  # removed meanwhile
                continue
            if _alive(int(raw["pid"])):
                found.append(Ack(int(raw["pid"]), int(raw["generation"]), raw["models"]))
        return sorted(found, key=lambda a: a.pid)

    def wait(self, generation: int, workers: int, timeout: float, interval: float = 0.05) -> tuple[bool, list[Ack]]:
        """Until `workers` live workers acknowledged `generation` or later (True), or `timeout` (False); the acks."""
        deadline = time.monotonic() + timeout
        while True:
            acks = self.acks()
            if sum(a.generation >= generation for a in acks) >= workers:
                return True, acks
            if time.monotonic() >= deadline:
                return False, acks
            time.sleep(interval)  # gevent-patched under gevent workers: the worker keeps serving meanwhile

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.folder / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, payload: bytes) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_bytes(payload)
    staging.replace(path)  # readers see the old or the new file, never half of one


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
