"""The state of Triton-style sequences (V2 `sequence_id`, `sequence_start`, `sequence_end`), shared by every worker
of a server (embedded SQLite) or by every replica (Redis).

A sequence is keyed by (model name, sequence id); ids are uint64 or strings, and the int 5 and the string "5" are
different sequences. Its record holds the model version, the timesteps seen, the packed state tensors (opaque
bytes), a generation (random, drawn by every `start`) and the time of its last write. Requests never hold a lock
across a model run: a request `load`s the record, computes, then writes with compare-and-set on (generation, steps)
(`advance`, `end`), which fails when another request advanced, restarted or ended the sequence meanwhile, so two
requests of one sequence can never interleave their states (the generation rules out a restart that happens to
reach the same step count). A `start` creates or replaces.

Idle sequences expire `idle_seconds` after their last write (Triton's max_sequence_idle_microseconds). An expired
sequence leaves a tombstone with its step count for `tombstone_seconds` more, so that its next request hears
"expired after 60 s idle, having seen 1234 timesteps" instead of "unknown"; then it is forgotten.

- SQLite (`SqliteSequenceStore`): one WAL-mode file in the server's state folder; every operation is one SQL
  statement in autocommit, so each is atomic across processes (`UPDATE ... WHERE generation = ? AND steps = ?`).
  Expiry is lazy: a row idle too long reads as expired; a sweep (at most once a minute per process, on writes)
  empties the state of expired rows and deletes rows past their tombstone time. Connections are pooled per store
  and used by one caller at a time, which suits threads and gevent greenlets alike.
- Redis (`RedisSequenceStore`): a hash per live sequence, `PEXPIRE`d to the idle time on every write, and a
  tombstone hash (steps, updated) with the longer TTL, written alongside; each operation is one Lua script, with
  the Redis server's clock, so replicas need no common clock.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SeqId = int | str
DB_FILE = "sequences.sqlite3"
REDIS_PREFIX = "seqserve:seq:"
REDIS_SCHEMES = ("redis", "rediss", "unix")
# One retry, at once and only when the connection failed (a pooled connection that went stale): never after a
# timeout, when the script may have run (re-running a compare-and-set that succeeded would report a conflict).
# Options given in the URL win.
REDIS_OPTIONS: dict[str, Any] = {
    "socket_timeout": 5.0,
    "socket_connect_timeout": 5.0,
    "health_check_interval": 30,
    "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
}
MIN_TOMBSTONE_SECONDS = 3600.0
MAX_STR_ID_CHARS = 256


@dataclass(frozen=True)
class SequenceRecord:
    """One sequence's state. `generation` and `updated` are set by the store (`start`, writes) and read back by
    `load`; build the next record with `advanced` so that it keeps the generation the CAS compares."""

    model: str
    version: int
    steps: int
    state: bytes
    generation: str = ""
    updated: float = 0.0

    def advanced(self, steps: int, state: bytes) -> SequenceRecord:
        return replace(self, steps=steps, state=state)


class SequenceError(Exception):
    """Base of the store's refusals; `message` is meant for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownSequence(SequenceError):
    def __init__(self, model: str, seq_id: SeqId) -> None:
        super().__init__(
            f"sequence {describe_id(seq_id)} of model {model!r} is unknown (never started, or ended); "
            "its first request must set sequence_start"
        )
        self.model, self.seq_id = model, seq_id


class ExpiredSequence(SequenceError):
    """`steps`: the timesteps it had seen; `idle_for`: seconds since its last write; `idle_limit`: the setting."""

    def __init__(self, model: str, seq_id: SeqId, steps: int, idle_for: float, idle_limit: float) -> None:
        super().__init__(
            f"sequence {describe_id(seq_id)} of model {model!r} expired after {idle_limit:g} s idle "
            f"(its last request was {_seconds(idle_for)} s ago), having seen {steps} timesteps; "
            "send it again with sequence_start"
        )
        self.model, self.seq_id, self.steps, self.idle_for, self.idle_limit = model, seq_id, steps, idle_for, idle_limit


class StoreUnavailable(SequenceError):
    """The store cannot be reached or stays locked (answer 503)."""


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def describe_id(seq_id: SeqId) -> str:
    """42 for an int id, "42" (quoted) for a string id: the two are different sequences."""
    return str(seq_id) if isinstance(seq_id, int) else json.dumps(seq_id)


def id_key(seq_id: SeqId) -> str:
    """The storage key of an id, typed: `i:5` and `s:5` never collide."""
    if isinstance(seq_id, bool) or not isinstance(seq_id, int | str):
        raise ValueError(f"a sequence id is a uint64 or a string, got {type(seq_id).__name__}")
    if isinstance(seq_id, int):
        if not 0 <= seq_id < 2**64:
            raise ValueError(f"sequence id {seq_id} is outside uint64")
        return f"i:{seq_id}"
    if not 0 < len(seq_id) <= MAX_STR_ID_CHARS:
        raise ValueError(f"a string sequence id has 1 to {MAX_STR_ID_CHARS} characters, got {len(seq_id)}")
    return f"s:{seq_id}"


def _check_model(model: str, record: SequenceRecord) -> None:
    if record.model != model:
        raise ValueError(f"record of model {record.model!r} stored under model {model!r}")


class SequenceStore(ABC):
    """Shared sequence state; every operation is atomic across workers and replicas."""

    def __init__(self, idle_seconds: float, tombstone_seconds: float | None) -> None:
        if not idle_seconds > 0:
            raise ValueError(f"SEQSERVE_SEQUENCE_IDLE_S must be > 0 seconds, got {idle_seconds}")
        self.idle_seconds = float(idle_seconds)
        keep = max(self.idle_seconds, MIN_TOMBSTONE_SECONDS) if tombstone_seconds is None else tombstone_seconds
        self.tombstone_seconds = float(keep)

    @abstractmethod
    def start(self, model: str, seq_id: SeqId, record: SequenceRecord) -> SequenceRecord:
        """Create or replace (a START restarts); returns the stored record with its new generation."""

    @abstractmethod
    def load(self, model: str, seq_id: SeqId) -> SequenceRecord:
        """The live record; `UnknownSequence` if never started or ended, `ExpiredSequence` if idle too long."""

    @abstractmethod
    def advance(self, model: str, seq_id: SeqId, expected_steps: int, record: SequenceRecord) -> bool:
        """Store `record` if the live sequence still has `record.generation` and `expected_steps`; else False."""

    @abstractmethod
    def end(self, model: str, seq_id: SeqId, expected_steps: int, generation: str) -> bool:
        """Free the sequence if it still has `generation` and `expected_steps`; else False."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SequenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    url: str, state_folder: Path | None, idle_seconds: float, tombstone_seconds: float | None = None
) -> SequenceStore:
    """SEQSERVE_SEQUENCE_STORE: "" -> SQLite in `state_folder` (a private temp folder when None: one process only),
    `redis://host:port/db` (or rediss://, unix://) -> Redis."""
    if not url:
        return SqliteSequenceStore(state_folder, idle_seconds, tombstone_seconds)
    scheme = urlsplit(url).scheme
    if scheme in REDIS_SCHEMES:
        return RedisSequenceStore(url, idle_seconds, tombstone_seconds)
    raise ValueError(
        f"SEQSERVE_SEQUENCE_STORE: a URL of scheme {scheme or '(none)'!r} is not supported; leave it empty for the "
        "embedded SQLite store or give redis://host:port/db"
    )


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sequences (
    model TEXT NOT NULL, seq_key TEXT NOT NULL, version INTEGER NOT NULL, steps INTEGER NOT NULL,
    generation TEXT NOT NULL, state BLOB NOT NULL, updated REAL NOT NULL, PRIMARY KEY (model, seq_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sequences_updated ON sequences (updated);
"""
_UPSERT = """
INSERT INTO sequences VALUES (:model, :key, :version, :steps, :generation, :state, :now)
ON CONFLICT (model, seq_key) DO UPDATE SET version = excluded.version, steps = excluded.steps,
    generation = excluded.generation, state = excluded.state, updated = excluded.updated
"""
_ADVANCE = """
UPDATE sequences SET version = :version, steps = :steps, state = :state, updated = :now
WHERE model = :model AND seq_key = :key AND generation = :generation AND steps = :expected AND updated >= :live_since
"""
_END = """
DELETE FROM sequences
WHERE model = :model AND seq_key = :key AND generation = :generation AND steps = :expected AND updated >= :live_since
"""
_LOAD = "SELECT version, steps, generation, state, updated FROM sequences WHERE model = ? AND seq_key = ?"
_FORGET = "DELETE FROM sequences WHERE updated < ?"
_BURY = "UPDATE sequences SET state = x'' WHERE updated < ? AND length(state) > 0"
SWEEP_INTERVAL_S = 60.0
POOL_KEEP = 8


class SqliteSequenceStore(SequenceStore):
    def __init__(
        self, folder: Path | None, idle_seconds: float, tombstone_seconds: float | None = None, busy_timeout: float = 10
    ) -> None:
        super().__init__(idle_seconds, tombstone_seconds)
        self._private = None if folder is not None else tempfile.TemporaryDirectory(prefix="seqserve-sequences-")
        self.path = Path(folder if folder is not None else self._private.name) / DB_FILE
        self.busy_timeout = busy_timeout
        self._pool: list[sqlite3.Connection] = []
        self._next_sweep = 0.0
        with self._connection() as db:
            db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteSequenceStore({str(self.path)!r}, idle_seconds={self.idle_seconds:g})"

    def start(self, model: str, seq_id: SeqId, record: SequenceRecord) -> SequenceRecord:
        _check_model(model, record)
        stored = replace(record, generation=secrets.token_hex(8), updated=time.time())
        self._write(_UPSERT, self._params(model, seq_id, stored))
        return stored

    def load(self, model: str, seq_id: SeqId) -> SequenceRecord:
        with self._connection() as db:
            row = db.execute(_LOAD, (model, id_key(seq_id))).fetchone()
        if row is None:
            raise UnknownSequence(model, seq_id)
        version, steps, generation, state, updated = row
        idle_for = time.time() - updated
        if idle_for > self.idle_seconds + self.tombstone_seconds:
            raise UnknownSequence(model, seq_id)
        if idle_for > self.idle_seconds:
            raise ExpiredSequence(model, seq_id, steps, idle_for, self.idle_seconds)
        return SequenceRecord(model, version, steps, bytes(state), generation, updated)

    def advance(self, model: str, seq_id: SeqId, expected_steps: int, record: SequenceRecord) -> bool:
        _check_model(model, record)
        params = self._params(model, seq_id, replace(record, updated=time.time()))
        return self._write(_ADVANCE, {**params, "expected": expected_steps}) == 1

    def end(self, model: str, seq_id: SeqId, expected_steps: int, generation: str) -> bool:
        params = {"model": model, "key": id_key(seq_id), "generation": generation, "expected": expected_steps}
        return self._write(_END, {**params, "live_since": time.time() - self.idle_seconds}) == 1

    def close(self) -> None:
        while self._pool:
            self._pool.pop().close()
        if self._private is not None:
            self._private.cleanup()

    def _params(self, model: str, seq_id: SeqId, record: SequenceRecord) -> dict[str, Any]:
        return {
            "model": model,
            "key": id_key(seq_id),
            "version": record.version,
            "steps": record.steps,
            "generation": record.generation,
            "state": record.state,
            "now": record.updated,
            "live_since": record.updated - self.idle_seconds,
        }

    def _write(self, sql: str, params: dict[str, Any]) -> int:
        with self._connection() as db:
            changed = db.execute(sql, params).rowcount
            self._sweep(db)
        return changed

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Turn expired rows into tombstones (state emptied) and forget old tombstones: bounded storage."""
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(SWEEP_INTERVAL_S, self.tombstone_seconds)
        db.execute(_FORGET, (now - self.idle_seconds - self.tombstone_seconds,))
        db.execute(_BURY, (now - self.idle_seconds,))

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection, used by one caller at a time (a thread or a greenlet); errors become 503s."""
        try:
            db = self._take()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the sequence store {self.path} cannot be opened: {e}") from e
        try:
            yield db
        except BaseException as e:
            db.close()  # never hand on a connection in an unknown state
            if isinstance(e, sqlite3.OperationalError):
                raise StoreUnavailable(f"the sequence store {self.path} failed: {e}") from e
            raise
        if len(self._pool) < POOL_KEEP:
            self._pool.append(db)
        else:
            db.close()

    def _take(self) -> sqlite3.Connection:
        try:
            return self._pool.pop()  # atomic: two threads never get the same connection
        except IndexError:
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            self._wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        return db

    def _wal(self, db: sqlite3.Connection) -> None:
        """Switch the file to WAL. Workers that open a new file at once race for the switch, and SQLite answers the
        losers "database is locked" at once, without its busy handler: retry them until `busy_timeout`."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------- Redis

# Every script: KEYS[1] the live hash, KEYS[2] the tombstone hash; ARGV[1], ARGV[2] the generation and steps a CAS
# expects, ARGV[3..8] what a write stores (version, steps, state, generation, idle ms, tombstone ms). `now` is the
# Redis server's clock, so replicas need no common clock.
_LUA_NOW = "local t = redis.call('TIME') local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))"
_LUA_WRITE = """
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'steps', ARGV[4], 'state', ARGV[5], 'generation', ARGV[6],
    'updated', now)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('HSET', KEYS[2], 'steps', ARGV[4], 'updated', now)
redis.call('PEXPIRE', KEYS[2], ARGV[8])
return now
"""
_LUA_CAS = """
local current = redis.call('HMGET', KEYS[1], 'generation', 'steps')
if current[1] ~= ARGV[1] or current[2] ~= ARGV[2] then return false end
"""
_LUA_START = _LUA_NOW + _LUA_WRITE
_LUA_ADVANCE = _LUA_CAS + _LUA_NOW + _LUA_WRITE
_LUA_END = _LUA_CAS + "redis.call('DEL', KEYS[1], KEYS[2]) return 1"
_LUA_LOAD = """
local t = redis.call('TIME')
local live = redis.call('HGETALL', KEYS[1])
if #live > 0 then return {'live', live, t} end
return {'tombstone', redis.call('HGETALL', KEYS[2]), t}
"""
_SCRIPTS = {"start": _LUA_START, "advance": _LUA_ADVANCE, "end": _LUA_END, "load": _LUA_LOAD}


class RedisSequenceStore(SequenceStore):
    def __init__(self, url: str, idle_seconds: float, tombstone_seconds: float | None = None) -> None:
        super().__init__(idle_seconds, tombstone_seconds)
        self.where = _redacted(url)
        self._client = redis.Redis.from_url(url, **REDIS_OPTIONS)
        self._scripts = {name: self._client.register_script(source) for name, source in _SCRIPTS.items()}

    def __repr__(self) -> str:
        return f"RedisSequenceStore({self.where!r}, idle_seconds={self.idle_seconds:g})"

    def start(self, model: str, seq_id: SeqId, record: SequenceRecord) -> SequenceRecord:
        _check_model(model, record)
        stored = replace(record, generation=secrets.token_hex(8))
        now = self._run("start", model, seq_id, ["", "", *self._write_args(stored)])
        return replace(stored, updated=float(now))

    def load(self, model: str, seq_id: SeqId) -> SequenceRecord:
        kind, pairs, (seconds, micros) = self._run("load", model, seq_id, [])
        fields = {k.decode(): v for k, v in zip(pairs[::2], pairs[1::2], strict=True)}
        if not fields:
            raise UnknownSequence(model, seq_id)
        steps, updated = int(fields["steps"]), float(fields["updated"])
        if kind == b"tombstone":
            idle_for = int(seconds) + int(micros) / 1e6 - updated
            raise ExpiredSequence(model, seq_id, steps, idle_for, self.idle_seconds)
        generation = fields["generation"].decode()
        return SequenceRecord(model, int(fields["version"]), steps, fields["state"], generation, updated)

    def advance(self, model: str, seq_id: SeqId, expected_steps: int, record: SequenceRecord) -> bool:
        _check_model(model, record)
        args = [record.generation, expected_steps, *self._write_args(record)]
        return self._run("advance", model, seq_id, args) is not None

    def end(self, model: str, seq_id: SeqId, expected_steps: int, generation: str) -> bool:
        return self._run("end", model, seq_id, [generation, expected_steps]) is not None

    def close(self) -> None:
        self._client.close()

    def _write_args(self, record: SequenceRecord) -> list[Any]:
        idle_ms = max(1, round(self.idle_seconds * 1000))
        tombstone_ms = idle_ms + max(1, round(self.tombstone_seconds * 1000))
        return [record.version, record.steps, record.state, record.generation, idle_ms, tombstone_ms]

    def _run(self, script: str, model: str, seq_id: SeqId, args: list[Any]) -> Any:
        try:
            return self._scripts[script](keys=redis_keys(model, seq_id), args=args)
        except redis.RedisError as e:
            raise StoreUnavailable(f"the sequence store {self.where} failed: {e}") from e


def redis_keys(model: str, seq_id: SeqId) -> list[str]:
    """The live and tombstone keys; the model is percent-encoded (no ':' in it), the hash tag keeps both on one slot."""
    tag = "{" + quote(model, safe="") + ":" + id_key(seq_id) + "}"
    return [f"{REDIS_PREFIX}live:{tag}", f"{REDIS_PREFIX}expired:{tag}"]


def _redacted(url: str) -> str:
    """The URL without its password, for messages and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()
