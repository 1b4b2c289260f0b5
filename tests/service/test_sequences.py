"""The sequence store, the same behaviour on both back ends: SQLite in a folder shared by processes, and a real
redis-server (tests/redis_server.py). Concurrency is tested with threads and forked processes hammering one
sequence through compare-and-set: every successful advance must chain onto the previous one."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.sequences import (
    DB_FILE,
    ExpiredSequence,
    RedisSequenceStore,
    SequenceRecord,
    SequenceStore,
    SqliteSequenceStore,
    StoreUnavailable,
    UnknownSequence,
    id_key,
    open_store,
    redis_keys,
)
from tests.conftest import REPO_ROOT
from tests.redis_server import RedisServer

MODEL = "lstm_step"
IDLE = 30.0


@dataclass
class Backend:
    """Where stores open: SQLite in `folder` (url "") or the test run's redis-server; `open` tracks what it opened."""

    url: str
    folder: Path
    opened: list[SequenceStore] = field(default_factory=list)

    def open(self, idle_seconds: float = IDLE, tombstone_seconds: float | None = None) -> SequenceStore:
        self.opened.append(open_store(self.url, self.folder, idle_seconds, tombstone_seconds))
        return self.opened[-1]

    def holds(self, store: SequenceStore, seq_id: int | str) -> bool:
        """Whether anything of the sequence still takes space (the row, or the live and tombstone keys)."""
        if isinstance(store, RedisSequenceStore):
            return bool(store._client.exists(*redis_keys(MODEL, seq_id)))
        with contextlib.closing(sqlite3.connect(self.folder / DB_FILE)) as db:
            query = "SELECT count(*) FROM sequences WHERE model = ? AND seq_key = ?"
            return db.execute(query, (MODEL, id_key(seq_id))).fetchone()[0] > 0


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = ""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushdb()
        url = server.url
    backend = Backend(url, tmp_path)
    yield backend
    for store in backend.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> SequenceStore:
    return backend.open()


def record(steps: int, state: bytes = b"", version: int = 1) -> SequenceRecord:
    return SequenceRecord(MODEL, version, steps, state or f"state@{steps}".encode())


def test_start_load_advance_end(store: SequenceStore) -> None:
    before = time.time()
    started = store.start(MODEL, 42, record(5, b"\x00\xffbinary\x00"))
    assert started.generation
    loaded = store.load(MODEL, 42)
    assert loaded == started
    assert (loaded.model, loaded.version, loaded.steps, loaded.state) == (MODEL, 1, 5, b"\x00\xffbinary\x00")
    assert before - 1 < loaded.updated < time.time() + 1

    assert store.advance(MODEL, 42, 5, loaded.advanced(12, b"next"))
    again = store.load(MODEL, 42)
    assert (again.steps, again.state, again.generation) == (12, b"next", started.generation)
    assert again.updated >= loaded.updated

    assert store.end(MODEL, 42, 12, again.generation)
    with pytest.raises(UnknownSequence):
        store.load(MODEL, 42)
    assert not store.end(MODEL, 42, 12, again.generation)


def test_unknown_sequence_says_to_start_it(store: SequenceStore) -> None:
    with pytest.raises(UnknownSequence) as caught:
        store.load(MODEL, 7)
    assert caught.value.message == (
        "sequence 7 of model 'lstm_step' is unknown (never started, or ended); its first request must set "
        "sequence_start"
    )
    assert not store.advance(MODEL, 7, 0, record(3))
    assert not store.end(MODEL, 7, 0, "")


def test_stale_writes_fail(store: SequenceStore) -> None:
    loaded = store.start(MODEL, 1, record(10))
    assert not store.advance(MODEL, 1, 9, loaded.advanced(11, b"x"))  # wrong step count
    assert not store.advance(MODEL, 1, 10, SequenceRecord(MODEL, 1, 11, b"x", "0" * 16))  # wrong generation
    assert not store.end(MODEL, 1, 11, loaded.generation)
    assert store.load(MODEL, 1) == loaded  # untouched


def test_start_restarts_and_stale_requests_of_the_old_run_fail(store: SequenceStore) -> None:
    old = store.start(MODEL, 9, record(4, b"old"))
    new = store.start(MODEL, 9, record(4, b"new", version=2))  # the same step count: only the generation differs
    assert new.generation != old.generation
    assert not store.advance(MODEL, 9, 4, old.advanced(8, b"stale"))
    assert not store.end(MODEL, 9, 4, old.generation)
    loaded = store.load(MODEL, 9)
    assert (loaded.state, loaded.version) == (b"new", 2)


def test_int_and_string_ids_are_different_sequences(store: SequenceStore) -> None:
    store.start(MODEL, 5, record(1, b"int"))
    store.start(MODEL, "5", record(2, b"str"))
    store.start("other", 5, SequenceRecord("other", 1, 3, b"other model"))
    assert store.load(MODEL, 5).state == b"int"
    assert store.load(MODEL, "5").state == b"str"
    assert store.load("other", 5).state == b"other model"
    with pytest.raises(UnknownSequence, match='sequence "5:x" of model'):
        store.load(MODEL, "5:x")
    big = 2**64 - 1
    store.start(MODEL, big, record(1))
    assert store.load(MODEL, big).steps == 1


@pytest.mark.parametrize(
    ("seq_id", "message"),
    [
        (-1, "outside uint64"),
        (2**64, "outside uint64"),
        (True, "got bool"),
        (1.5, "got float"),
        ("", "1 to 256 characters"),
        ("x" * 257, "1 to 256 characters"),
    ],
)
def test_invalid_ids(store: SequenceStore, seq_id: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.start(MODEL, seq_id, record(1))


def test_a_record_of_another_model_is_refused(store: SequenceStore) -> None:
    with pytest.raises(ValueError, match="record of model 'lstm_step' stored under model 'gru_last'"):
        store.start("gru_last", 1, record(1))


def test_idle_sequences_expire_with_their_step_count(backend: Backend) -> None:
    store = backend.open(idle_seconds=0.3)
    started = store.start(MODEL, 42, record(1234))
    time.sleep(0.5)
    with pytest.raises(ExpiredSequence) as caught:
        store.load(MODEL, 42)
    error = caught.value
    assert (error.steps, error.idle_limit) == (1234, 0.3)
    assert 0.4 < error.idle_for < 5
    assert error.message == (
        f"sequence 42 of model 'lstm_step' expired after 0.3 s idle (its last request was {error.idle_for:.1f} s "
        "ago), having seen 1234 timesteps; send it again with sequence_start"
    )
    assert not store.advance(MODEL, 42, 1234, started.advanced(1235, b"late"))  # no resurrection
    assert not store.end(MODEL, 42, 1234, started.generation)
    store.start(MODEL, 42, record(3))  # a start brings it back
    assert store.load(MODEL, 42).steps == 3


def test_every_write_refreshes_the_idle_time(backend: Backend) -> None:
    store = backend.open(idle_seconds=0.6)
    current = store.start(MODEL, "s", record(0))
    for step in range(1, 6):
        time.sleep(0.2)  # 1 s in all, past the idle time, but never 0.6 s without a write
        assert store.advance(MODEL, "s", step - 1, current.advanced(step, b"x"))
        current = store.load(MODEL, "s")
    assert current.steps == 5


def test_tombstones_are_forgotten(backend: Backend) -> None:
    store = backend.open(idle_seconds=0.2, tombstone_seconds=0.3)
    store.start(MODEL, 1, record(10, b"x" * 1000))
    time.sleep(0.3)
    with pytest.raises(ExpiredSequence):
        store.load(MODEL, 1)
    time.sleep(0.4)
    with pytest.raises(UnknownSequence):
        store.load(MODEL, 1)
    store.start(MODEL, 2, record(1))  # a write: SQLite sweeps now
    assert not backend.holds(store, 1)
    assert backend.holds(store, 2)


def test_expired_state_is_emptied_before_it_is_forgotten(tmp_path: Path) -> None:
    """SQLite keeps the tombstone as the row, with its state bytes dropped by the sweep (bounded storage)."""
    with SqliteSequenceStore(tmp_path, idle_seconds=0.2, tombstone_seconds=60) as store:
        store.start(MODEL, 1, record(10, b"x" * 1000))
        time.sleep(0.3)
        store._next_sweep = 0.0  # the once-a-minute sweep, due now
        store.start(MODEL, 2, record(1))
        with contextlib.closing(sqlite3.connect(tmp_path / DB_FILE)) as db:
            sizes = dict(db.execute("SELECT seq_key, length(state) FROM sequences").fetchall())
        assert sizes == {"i:1": 0, "i:2": len(b"state@1")}
        with pytest.raises(ExpiredSequence, match="having seen 10 timesteps"):
            store.load(MODEL, 1)


def chain(state: bytes, writer: str) -> bytes:
    return hashlib.sha256(state + writer.encode()).digest()


def hammer(store: SequenceStore, seq_id: int | str, writer: str, attempts: int) -> list[tuple[int, bytes, bytes]]:
    """Load, compute (a hash chain standing in for the model), CAS; the successful transitions, as (steps, old, new)."""
    done = []
    for attempt in range(attempts):
        loaded = store.load(MODEL, seq_id)
        new_state = chain(loaded.state, f"{writer}/{attempt}")
        if store.advance(MODEL, seq_id, loaded.steps, loaded.advanced(loaded.steps + 1, new_state)):
            done.append((loaded.steps, loaded.state, new_state))
    return done


def assert_one_unbroken_chain(store: SequenceStore, seq_id: int | str, transitions: list[tuple[int, bytes, bytes]]):
    final = store.load(MODEL, seq_id)
    assert final.steps == len(transitions)  # nothing lost, nothing counted twice
    transitions.sort()
    assert [steps for steps, _, _ in transitions] == list(range(len(transitions)))
    state = b"genesis"
    for _, old, new in transitions:
        assert old == state  # each advance built on the state the previous one stored
        state = new
    assert final.state == state


def test_threads_hammering_one_sequence(store: SequenceStore) -> None:
    store.start(MODEL, "hot", record(0, b"genesis"))
    results: list[list[tuple[int, bytes, bytes]]] = []
    threads = [threading.Thread(target=lambda w=w: results.append(hammer(store, "hot", f"t{w}", 40))) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    transitions = [t for r in results for t in r]
    assert len(results) == 8
    assert 40 <= len(transitions) < 8 * 40  # some succeeded, some lost a race (else the test proves nothing)
    assert_one_unbroken_chain(store, "hot", transitions)


def _hammer_in_process(url: str, folder: str, writer: str, attempts: int, barrier: Any, out: Any) -> None:
    with open_store(url, Path(folder), IDLE) as store:
        barrier.wait()
        out.put(hammer(store, 77, writer, attempts))


def test_processes_hammering_one_sequence(backend: Backend) -> None:
    store = backend.open()
    store.start(MODEL, 77, record(0, b"genesis"))
    context = multiprocessing.get_context("fork")  # as gunicorn makes its workers
    writers, attempts = 4, 50
    barrier, out = context.Barrier(writers), context.Queue()
    processes = [
        context.Process(
            target=_hammer_in_process, args=(backend.url, str(backend.folder), f"p{w}", attempts, barrier, out)
        )
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    transitions = [t for _ in processes for t in out.get(timeout=120)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert attempts <= len(transitions) < writers * attempts
    assert_one_unbroken_chain(store, 77, transitions)


def test_open_store_chooses_by_url(tmp_path: Path, redis_server: RedisServer) -> None:
    with open_store("", tmp_path, IDLE) as store:
        assert isinstance(store, SqliteSequenceStore)
        assert store.path == tmp_path / DB_FILE
    with open_store(redis_server.url, None, IDLE) as store:
        assert isinstance(store, RedisSequenceStore)
    with pytest.raises(ValueError, match="scheme 'postgres' is not supported; leave it empty"):
        open_store("postgres://u:pw@h/db", None, IDLE)
    with pytest.raises(ValueError, match="SEQSERVE_SEQUENCE_IDLE_S must be > 0"):
        open_store("", tmp_path, 0)


def test_sqlite_without_a_folder_is_private_and_cleaned_up() -> None:
    store = open_store("", None, IDLE)
    assert isinstance(store, SqliteSequenceStore)
    store.start(MODEL, 1, record(1))
    assert store.load(MODEL, 1).steps == 1
    store.close()
    assert not store.path.parent.exists()


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    with open_store("", tmp_path, IDLE) as store:
        store.start(MODEL, 1, record(1))
        with contextlib.closing(sqlite3.connect(tmp_path / DB_FILE)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@contextlib.contextmanager
def _writer_holding_the_file(folder: Path, release_after: float | None) -> Iterator[None]:
    """Another process's connection mid-write on a new file still in rollback mode (what a worker that won the race
    to create it holds): switching to WAL then fails at once, without SQLite's busy handler."""
    holder = sqlite3.connect(folder / DB_FILE, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")
    timer = None if release_after is None else threading.Timer(release_after, holder.execute, ("COMMIT",))
    if timer is not None:
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.join()
        holder.close()


def test_a_worker_opening_the_file_while_another_writes_it_waits_for_it(tmp_path: Path) -> None:
    """CI once saw a server's second worker die at boot with "database is locked" (gunicorn: "Worker failed to
    boot"): both workers opened a new store file at once."""
    with _writer_holding_the_file(tmp_path, release_after=0.3):
        started = time.monotonic()
        with SqliteSequenceStore(tmp_path, IDLE, busy_timeout=10) as store:
            assert time.monotonic() - started >= 0.25
            store.start(MODEL, 1, record(1))
            assert store.load(MODEL, 1).steps == 1
    with contextlib.closing(sqlite3.connect(tmp_path / DB_FILE)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_store_file_held_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    with _writer_holding_the_file(tmp_path, release_after=None):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot be opened: database is locked"):
            SqliteSequenceStore(tmp_path, IDLE, busy_timeout=0.2)
        assert 0.1 <= time.monotonic() - started < 5


def test_workers_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # as gunicorn makes its workers
    for attempt in range(12):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        barrier, out = context.Barrier(4), context.Queue()
        processes = [context.Process(target=_open_in_process, args=(folder, barrier, out)) for _ in range(4)]
        for process in processes:
            process.start()
        errors = [out.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        assert errors == [""] * 4, f"attempt {attempt}"


def _open_in_process(folder: Path, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        SqliteSequenceStore(folder, IDLE).close()
        out.put("")
    except Exception as e:  # reported to the test
        out.put(repr(e))


def test_redis_keys_are_prefixed_typed_and_expire(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.flushdb()
        with open_store(redis_server.url, None, idle_seconds=10, tombstone_seconds=3600) as store:
            store.start("a:b", 5, SequenceRecord("a:b", 1, 1, b"x"))
            live, tombstone = redis_keys("a:b", 5)
            assert live == "seqserve:seq:live:{a%3Ab:i:5}"
            assert sorted(client.keys("*")) == sorted([live.encode(), tombstone.encode()])
            assert 9000 < client.pttl(live) <= 10_000
            assert 3_600_000 < client.pttl(tombstone) <= 3_610_000
            assert redis_keys("a", "b:i:5") != redis_keys("a:b", 5)


def test_an_unreachable_redis_is_store_unavailable_without_its_password(redis_server: RedisServer) -> None:
    closed = RedisServer(port=1, process=redis_server.process, log=redis_server.log)
    url = closed.url.replace("redis://", "redis://user:hunter2@")
    with open_store(url, None, IDLE) as store:
        assert "hunter2" not in repr(store)
        with pytest.raises(StoreUnavailable, match=r"the sequence store redis://user:\*\*\*@127.0.0.1:1/0 failed") as e:
            store.load(MODEL, 1)
    assert "hunter2" not in e.value.message


GEVENT_HAMMER = """
from gevent import monkey

monkey.patch_all()
import sys
from pathlib import Path

import gevent

from service.sequences import SequenceRecord, open_store

store = open_store(sys.argv[1], Path(sys.argv[2]), 30.0)
store.start("m", 1, SequenceRecord("m", 1, 0, b""))
won = []


def request(worker):
    for _ in range(20):
        loaded = store.load("m", 1)
        gevent.sleep(0)  # the model run: other greenlets' requests go on meanwhile
        won.append(store.advance("m", 1, loaded.steps, loaded.advanced(loaded.steps + 1, loaded.state + b"x")))


gevent.joinall([gevent.spawn(request, w) for w in range(30)], raise_error=True)
final = store.load("m", 1)
print(sum(won), len(won), final.steps, len(final.state))
"""


def test_greenlets_of_a_gevent_worker_share_a_store(backend: Backend) -> None:
    """gunicorn's gevent workers run requests as greenlets of one thread: pooled connections, same CAS guarantee."""
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_HAMMER, backend.url, str(backend.folder)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    won, tried, steps, state_bytes = map(int, result.stdout.split())
    assert tried == 30 * 20
    assert 0 < won < tried  # greenlets did collide
    assert steps == state_bytes == won
