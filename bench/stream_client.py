"""The client side of the stream load generator: closed-loop streams over keep-alive HTTP/1.1 connections to
127.0.0.1, driven by one asyncio loop per process (bench/stream_load.py runs several processes).

wrk replays one body; a stream cannot: each request carries what the previous answer returned (a v1 state token),
continues a V2 sequence id, or moves a sliding window on. A `Protocol` builds a stream's next request and reads its
answer, checking the stream's bookkeeping (the step count the server reports must be the client's: a mismatch is
an error like a 5xx); a `Stream` is one live sequence with its seeded timesteps; `Connection` is a minimal HTTP/1.1
client (one request in flight, Content-Length bodies). `run_job` runs one process's share of the streams: each
stream connects and sends one uncounted request (it starts the stream), waits for the start time the parent sets
once every stream of the load got that far (`Shared`), then sends its next request only after the previous
answer until the end time (or the stop flag of an age run), and a V2 sequence ends with one more uncounted
request carrying `sequence_end`. Every answered request is recorded with its completion time, latency, stream
and the stream's age (timesteps answered) after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing.connection import Connection as Pipe
from typing import Any

import numpy as np
import orjson

from bench.fixtures import FEATURES

CYCLE = 1024  # seeded timesteps per stream, replayed in a loop (row t is rows[t % CYCLE])
SEED = 8  # of the timesteps; a run's own seed (Job.seed) only makes its V2 sequence ids unique
ROW_BYTES = FEATURES * 4
ERROR_PAUSE_S = 0.05  # after a failed request: a server that refuses at once must not make the loop spin
KEPT_ERRORS = 3
WINDOW_POLL_S = 0.002  # a primed stream looks this often whether the parent has set the start
READY = "ready"


class BadAnswer(Exception):
    """An answer that is not the one the stream needs: an HTTP error, a malformed answer, wrong bookkeeping."""


# --------------------------------------------------------------------------------------------- streams


class StreamData:
    """A stream's timesteps, seeded by its index: CYCLE rows of float32 features replayed in a loop, encoded once per
    process (`of`) as JSON rows (orjson's shortest float32 repr, as bench.payloads encodes) and as raw
    little-endian float32, so that a measurement spends no client time on it."""

    def __init__(self, index: int) -> None:
        self.rows = np.random.default_rng([SEED, index]).normal(size=(CYCLE, FEATURES)).astype(np.float32)

    @staticmethod
    @functools.cache
    def of(index: int) -> StreamData:
        return StreamData(index)

    def timesteps(self, start: int, stop: int) -> np.ndarray:
        return self.rows[np.arange(start, stop) % CYCLE]

    @cached_property
    def _json(self) -> list[bytes]:
        return [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in (*self.rows, *self.rows)]

    @cached_property
    def _raw(self) -> bytes:
        return np.concatenate([self.rows, self.rows]).astype("<f4").tobytes()

    def json_rows(self, start: int, stop: int) -> bytes:
        """Rows start..stop as `[..],[..]` (at most CYCLE of them)."""
        first = start % CYCLE
        return b",".join(self._json[first : first + stop - start])

    def raw_rows(self, start: int, stop: int) -> bytes:
        first = start % CYCLE * ROW_BYTES
        return self._raw[first : first + (stop - start) * ROW_BYTES]


@dataclass
class Stream:
    index: int
    data: StreamData
    step: int = 0  # timesteps answered so far: the stream's age (for a window: the newest timestep sent)
    token: bytes = b"null"  # v1: the JSON value of "state" for the next request
    sequence_id: int = 0  # V2: the sequence's id, a new one at each restart
    reached: bool = False  # age runs: the stream has reached the target step


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


# ------------------------------------------------------------------------------------------- protocols


class Protocol(ABC):
    """How one kind of stream talks to the server: its requests, and what it reads from the answers."""

    path = ""
    content_type = "application/json"
    ends = False  # sends a last, uncounted request that ends the sequence

    def __init__(self, model: str, chunk: int, window: int, port: int, seed: int) -> None:
        if chunk > window:
            raise ValueError(f"chunk {chunk} > window {window}: a request sends at least its new timesteps")
        self.chunk, self.window, self.seed = chunk, window, seed
        head = f"POST {self.path.format(model=model)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        self.head = (head + f"Content-Type: {self.content_type}\r\n").encode()

    def new_stream(self, index: int) -> Stream:
        stream = Stream(index, StreamData.of(index))
        self.restart(stream)
        return stream

    def restart(self, stream: Stream) -> None:
        """Start the stream over (a new stream, and after a failed request)."""
        stream.step, stream.token = 0, b"null"

    def request(self, stream: Stream, end: bool = False) -> bytes:
        body, extra = self.body(stream, end)
        return b"%sContent-Length: %d\r\n%s\r\n%s" % (self.head, len(body), extra, body)

    @abstractmethod
    def body(self, stream: Stream, end: bool) -> tuple[bytes, bytes]:
        """The body and any extra header lines."""

    def answered(self, stream: Stream, answer: Answer) -> None:
        """Read the answer to the stream's last request and move the stream on (BadAnswer when wrong)."""
        if answer.status != 200:
            raise BadAnswer(f"HTTP {answer.status}: {answer.body[:200]!r}")
        try:
            self.advance(stream, answer)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # ValueError: orjson's decode error too
            raise BadAnswer(f"malformed answer ({type(exc).__name__}: {exc}): {answer.body[:200]!r}") from None
        stream.step += self.chunk

    def advance(self, stream: Stream, answer: Answer) -> None:  # noqa: B027 (a hook: the windows keep nothing)
        """What the protocol keeps from an answer, before the step count moves on."""

    def seen(self, step: int) -> tuple[int, int]:
        """The timesteps the model has read, from a zero state, when it answers the request sent at `step`."""
        return 0, step + self.chunk

    @abstractmethod
    def probabilities(self, answer: Answer) -> np.ndarray:
        """The probabilities [chunk, C] of this request's new timesteps (for the answer checks)."""


def _check_steps(stream: Stream, got: Any, chunk: int) -> None:
    if got != stream.step + chunk:
        raise BadAnswer(f"the server counts {got} timesteps, the stream sent {stream.step + chunk}")


class V1Stream(Protocol):
    """`POST /v1/models/<m>/stream` with the token of the previous answer."""

    path = "/v1/models/{model}/stream"

    def body(self, stream: Stream, end: bool) -> tuple[bytes, bytes]:
        rows = stream.data.json_rows(stream.step, stream.step + self.chunk)
        return b'{"timesteps":[%s],"state":%s}' % (rows, stream.token), b""

    def advance(self, stream: Stream, answer: Answer) -> None:
        doc = orjson.loads(answer.body)
        _check_steps(stream, doc.get("steps"), self.chunk)
        stream.token = b'"%s"' % doc["state"].encode()

    def probabilities(self, answer: Answer) -> np.ndarray:
        return np.asarray(orjson.loads(answer.body)["probabilities"], dtype=np.float32)


def v2_binary_body(raw: bytes, steps: int, parameters: dict[str, Any]) -> tuple[bytes, bytes]:
    features = {"name": "features", "shape": [1, steps, FEATURES], "datatype": "FP32"}
    header = orjson.dumps(
        {
            "inputs": [{**features, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            "parameters": parameters,
        }
    )
    return header + raw, b"Inference-Header-Content-Length: %d\r\n" % len(header)


def v2_answer(answer: Answer) -> tuple[dict[str, Any], bytes]:
    """The JSON part of a V2 answer and its binary tail."""
    length = int(answer.headers.get(b"inference-header-content-length", len(answer.body)))
    return orjson.loads(answer.body[:length]), answer.body[length:]


def v2_probabilities(answer: Answer) -> np.ndarray:
    """`probabilities` [1, T, C] of a V2 answer (binary or JSON data) as [T, C]."""
    doc, tail = v2_answer(answer)
    offset = 0
    for output in doc["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        data = np.frombuffer(tail[offset : offset + size], "<f4") if size is not None else np.asarray(output["data"])
        offset += size or 0
        if output["name"] == "probabilities":
            return data.reshape(output["shape"])[0]
    raise BadAnswer(f"no `probabilities` output in {doc}")


class V2Sequence(Protocol):
    """`POST /v2/models/<m>/infer`, V2 binary tensors, with Triton's `sequence_id`/`sequence_start`/`sequence_end`."""

    path = "/v2/models/{model}/infer"
    content_type = "application/octet-stream"
    ends = True

    def restart(self, stream: Stream) -> None:
        super().restart(stream)
        restarts = stream.sequence_id & 0xFFFF
        # unique per run (seed: 30 bits), stream (16 bits) and restart (16 bits); never 0, below 2**63
        stream.sequence_id = (self.seed % (1 << 30) + 1) << 32 | stream.index << 16 | (restarts + 1)

    def body(self, stream: Stream, end: bool) -> tuple[bytes, bytes]:
        raw = stream.data.raw_rows(stream.step, stream.step + self.chunk)
        parameters = {"sequence_id": stream.sequence_id, "sequence_start": stream.step == 0, "sequence_end": end}
        return v2_binary_body(raw, self.chunk, parameters)

    def advance(self, stream: Stream, answer: Answer) -> None:
        doc, _ = v2_answer(answer)
        _check_steps(stream, (doc.get("parameters") or {}).get("sequence_steps"), self.chunk)

    def probabilities(self, answer: Answer) -> np.ndarray:
        return v2_probabilities(answer)


class V1Window(Protocol):
    """The stateless alternative: `POST /v1/models/<m>/predict` with the last `window` timesteps, `chunk` of them
    new. The client keeps the history, so it starts with a full window."""

    path = "/v1/models/{model}/predict"

    def restart(self, stream: Stream) -> None:
        stream.step = self.window - self.chunk

    def seen(self, step: int) -> tuple[int, int]:
        return step + self.chunk - self.window, step + self.chunk

    def body(self, stream: Stream, end: bool) -> tuple[bytes, bytes]:
        return b'{"sequences":[[%s]]}' % stream.data.json_rows(*self.seen(stream.step)), b""

    def probabilities(self, answer: Answer) -> np.ndarray:
        rows = orjson.loads(answer.body)["predictions"][0]["probabilities"]
        return np.asarray(rows, dtype=np.float32)[-self.chunk :]


class V2Window(V1Window):
    """The stateless alternative on V2 binary tensors: `POST /v2/models/<m>/infer` without sequence parameters."""

    path = "/v2/models/{model}/infer"
    content_type = "application/octet-stream"

    def body(self, stream: Stream, end: bool) -> tuple[bytes, bytes]:
        return v2_binary_body(stream.data.raw_rows(*self.seen(stream.step)), self.window, {})

    def probabilities(self, answer: Answer) -> np.ndarray:
        return v2_probabilities(answer)[-self.chunk :]


PROTOCOLS: dict[str, type[Protocol]] = {
    "v1-stream": V1Stream,
    "v2-sequence": V2Sequence,
    "v1-window": V1Window,
    "v2-window": V2Window,
}


# ------------------------------------------------------------------------------------------------ HTTP


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes], int]:
    """Status, headers (lower-case names) and body length of an answer's head."""
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise BadAnswer(f"not an HTTP status line: {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    try:
        return status, headers, int(headers[b"content-length"])
    except (KeyError, ValueError):
        raise BadAnswer(f"an answer without a Content-Length (headers {sorted(headers)}): not supported") from None


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[int, dict[bytes, bytes], int, int] | None = None  # status, headers, body length, start
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            answer = self._answer()
        except BadAnswer as exc:
            self._fail(exc)
            return
        if answer is not None:
            self.waiter.set_result(answer)

    def _answer(self) -> Answer | None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.head = (*parse_head(bytes(self.buffer[:end])), end + 4)
        status, headers, length, start = self.head
        stop = start + length
        if len(self.buffer) < stop:
            return None
        body = bytes(self.buffer[start:stop])
        del self.buffer[:stop]
        self.head = None
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return Answer(status, headers, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the server closed the connection ({exc or 'EOF'})"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes, timeout: float) -> Answer:
        if self.closed or self.transport is None:
            raise ConnectionError("the connection is closed")
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self._fail, TimeoutError(f"no answer within {timeout:g} s"))
        self.transport.write(request)
        try:
            return await self.waiter
        finally:
            timer.cancel()


async def connect(port: int) -> Connection:
    _, connection = await asyncio.get_running_loop().create_connection(Connection, "127.0.0.1", port)
    return connection


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class Job:
    """One process's share of a load: which streams, what they send, where, and when."""

    protocol: str  # a key of PROTOCOLS
    model: str
    chunk: int  # new timesteps per request
    window: int  # timesteps per request (streams: = chunk)
    port: int
    seed: int  # makes this run's V2 sequence ids unique
    streams: tuple[int, ...] = ()
    target_steps: int = 0  # age runs: report when every stream has reached this many timesteps
    timeout: float = 10.0

    def protocol_for(self) -> Protocol:
        return PROTOCOLS[self.protocol](self.model, self.chunk, self.window, self.port, self.seed)


@dataclass
class Outcome:
    """Every answered request of one process: completion time, latency (s), stream, age after it."""

    done_at: array = field(default_factory=lambda: array("d"))
    latency: array = field(default_factory=lambda: array("d"))
    stream: array = field(default_factory=lambda: array("i"))
    step: array = field(default_factory=lambda: array("q"))
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0  # the load process's own CPU time

    def record(self, done_at: float, latency: float, stream: Stream) -> None:
        self.done_at.append(done_at)
        self.latency.append(latency)
        self.stream.append(stream.index)
        self.step.append(stream.step)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.first_errors) < KEPT_ERRORS:
            self.first_errors.append(message)


@dataclass(frozen=True)
class Shared:
    """Raw shared memory between the parent and the load processes (one writer per field or slot): the window
    [start, end] of the load (0: not set yet; the parent writes end first, start last), the streams of each
    process that have sent their first request, a flag per process once all its streams reached the target age,
    and the parent's stop flag."""

    window: Any  # RawArray("d", 2)
    primed: Any  # RawArray("i", processes)
    reached: Any  # RawArray("b", processes)
    stop: Any  # RawValue("b")

    @classmethod
    def create(cls, context: Any, processes: int) -> Shared:
        return cls(
            context.RawArray("d", 2),
            context.RawArray("i", processes),
            context.RawArray("b", processes),
            context.RawValue("b", 0),
        )

    def reset(self) -> None:
        self.window[0] = self.window[1] = 0.0
        self.stop.value = 0
        for slot in range(len(self.primed)):
            self.primed[slot] = self.reached[slot] = 0


class Signals:
    """One load process's view of `Shared` (its slot)."""

    def __init__(self, shared: Shared, slot: int) -> None:
        self.shared, self.slot = shared, slot

    def stopped(self) -> bool:
        return bool(self.shared.stop.value)

    def primed(self) -> None:
        self.shared.primed[self.slot] += 1

    async def window(self) -> tuple[float, float]:
        while not (start := self.shared.window[0]):
            await asyncio.sleep(WINDOW_POLL_S)
        return start, self.shared.window[1]

    def all_reached(self) -> None:
        self.shared.reached[self.slot] = 1


async def _send(connection: Connection, job: Job, protocol: Protocol, stream: Stream, end: bool = False) -> None:
    answer = await connection.exchange(protocol.request(stream, end), job.timeout)
    protocol.answered(stream, answer)


async def _step(connection: Connection, job: Job, protocol: Protocol, stream: Stream, out: Outcome) -> Connection:
    """One request of the closed loop, recorded; the connection to use next."""
    started = time.monotonic()
    try:
        if connection.closed:
            connection = await connect(job.port)
        await _send(connection, job, protocol, stream)
    except (OSError, BadAnswer) as exc:  # OSError: refused, reset, closed, timed out
        out.error(f"stream {stream.index} at step {stream.step}: {type(exc).__name__}: {exc}")
        protocol.restart(stream)
        await asyncio.sleep(ERROR_PAUSE_S)
        return connection
    done = time.monotonic()
    out.record(done, done - started, stream)
    return connection


async def _drive(
    job: Job, protocol: Protocol, stream: Stream, out: Outcome, reached: list[int], signals: Signals
) -> None:
    try:
        connection = await connect(job.port)
    except OSError as exc:
        out.error(f"stream {stream.index}: cannot connect to 127.0.0.1:{job.port}: {exc}")
        signals.primed()
        return
    try:
        with contextlib.suppress(OSError, BadAnswer):  # the uncounted first request
            await _send(connection, job, protocol, stream)
        signals.primed()
        start_at, end_at = await signals.window()
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        while time.monotonic() < end_at and not signals.stopped():
            connection = await _step(connection, job, protocol, stream, out)
            if job.target_steps and not stream.reached and stream.step >= job.target_steps:
                stream.reached = True
                reached[0] += 1
                if reached[0] == len(job.streams):
                    signals.all_reached()
        if protocol.ends and not connection.closed:
            with contextlib.suppress(OSError, BadAnswer):
                await _send(connection, job, protocol, stream, end=True)
    finally:
        connection.close()


async def run_job(job: Job, signals: Signals) -> Outcome:
    protocol, out, reached = job.protocol_for(), Outcome(), [0]
    streams = [protocol.new_stream(i) for i in job.streams]
    await asyncio.gather(*(_drive(job, protocol, s, out, reached, signals) for s in streams))
    return out


def worker(pipe: Pipe, shared: Shared, slot: int) -> None:
    """A load process: says READY once imported, then runs the jobs it receives until it receives None, answering
    each with its Outcome (or the error that stopped it, as a string)."""
    signals = Signals(shared, slot)
    pipe.send(READY)
    while (job := pipe.recv()) is not None:
        cpu = time.process_time()
        try:
            result: Outcome | str = asyncio.run(run_job(job, signals))
            result.client_cpu_s = time.process_time() - cpu
        except Exception as exc:  # the parent reports it; this process keeps serving
            result = f"{type(exc).__name__}: {exc}"
        pipe.send(result)


# ------------------------------------------------------------------------------------------ answer checks


@dataclass(frozen=True)
class Sample:
    """One answered request of a checked stream: the rows the model read and the probabilities of the new ones."""

    seen: tuple[int, int]
    probabilities: np.ndarray


async def sample(job: Job, requests: int) -> tuple[StreamData, list[Sample]]:
    """One stream of `job`'s kind, `requests` requests one after another (a sequence then ended): what each
    answered, to compare with onnxruntime. Raises BadAnswer (or OSError) on the first failure."""
    protocol = job.protocol_for()
    stream = protocol.new_stream(0)
    connection = await connect(job.port)
    samples = []
    try:
        for i in range(requests):
            end = protocol.ends and i == requests - 1
            seen = protocol.seen(stream.step)
            answer = await connection.exchange(protocol.request(stream, end), job.timeout)
            protocol.answered(stream, answer)
            samples.append(Sample(seen, protocol.probabilities(answer)))
    finally:
        connection.close()
    return stream.data, samples
