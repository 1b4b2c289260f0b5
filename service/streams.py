"""Streams: per-timestep answers for live data, with the RNN state carried from one request to the next.

A stream request runs its new timesteps from the state the previous request ended in (zero for a new stream) and
keeps the state the model ends in, so the answers equal those of sending the whole sequence at once, while each
request costs only its own timesteps. Requests go through the adaptive batcher like any other: concurrent stream
requests of different clients merge into one run, their states joined along the batch axis.

Where the state lives between requests decides which worker or replica may answer the next one; here, any:
- v1 (`/v1/models/<name>/stream`): in the client. The answer carries a signed token (`service.tokens`) holding the
  exact float32 state, the model and version and the step count; the server keeps nothing.
- V2 (Triton's `sequence_id` / `sequence_start` / `sequence_end` request parameters): in a store shared by every
  worker (SQLite in the server's state folder) or every replica (Redis), `service.sequences`. Two requests of one
  sequence at once cannot both advance it: the store compares and sets on the step count, the loser gets 409.
A stream stays on the version it started on while that version is loaded; once it is gone, 409 says to restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from modelrepo.manifest import TensorSpec, state_names
from service.batching import Arrays
from service.codecs import SequenceParams
from service.dataplane import DataPlane, LoadedModel
from service.errors import BadRequest, Conflict, NotFound, NotReady, ServiceError
from service.metrics import Metrics
from service.sequences import (
    ExpiredSequence,
    SequenceRecord,
    SequenceStore,
    StoreUnavailable,
    UnknownSequence,
    describe_id,
)
from service.tokens import StreamState, TokenCodec, TokenError


class StoreDown(ServiceError):
    """The shared sequence store cannot be reached: a dependency failure the client may retry."""

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


@dataclass(frozen=True)
class StepResult:
    model: LoadedModel
    outputs: Arrays
    steps: int  # timesteps the stream has seen, this request's included


class Streams:
    def __init__(self, plane: DataPlane, codec: TokenCodec, store: SequenceStore, metrics: Metrics) -> None:
        self.plane, self.codec, self.store, self.metrics = plane, codec, store, metrics

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------------------- v1 tokens

    def token_model(self, name: str, version: int | None, token: str | None) -> tuple[LoadedModel, StreamState | None]:
        """The version a v1 stream request runs on, and the state its token carries (None: a new stream)."""
        if token is None:
            return streamable(self.plane.get(name, version)), None
        try:
            state = self.codec.decode(token, name)
        except TokenError as exc:
            raise BadRequest(exc.message, details={"state": [exc.reason]}) from None
        if version is not None and version != state.version:
            raise BadRequest(
                f"state token was made for {name!r} version {state.version}, not version {version}; "
                'continue on its version, or restart the stream with "state": null'
            )
        return self.pinned(name, state.version), state

    def token_step(
        self, model: LoadedModel, features: np.ndarray, state: StreamState | None
    ) -> tuple[Arrays, str, int]:
        """Run one chunk [T, F]; the outputs, the next token and the stream's step count."""
        tensors = _token_tensors(state, model) if state else None
        outputs = self._run(model, features, tensors, "v1")
        steps = (state.steps if state else 0) + len(features)
        final = {spec.name: outputs[out][:, 0, :] for spec, out in _state_pairs(model)}
        token = self.codec.encode(StreamState(model.name, model.version, steps, time.time(), final))
        return outputs, token, steps

    # ------------------------------------------------------------------------------------------ V2 sequences

    def sequence_model(
        self, name: str, version: int | None, params: SequenceParams
    ) -> tuple[LoadedModel, SequenceRecord | None]:
        """The version a V2 sequence request runs on, and its stored record (None for `sequence_start`)."""
        if params.start:
            return streamable(self.plane.get(name, version)), None
        try:
            record = self.store.load(name, params.id)
        except (UnknownSequence, ExpiredSequence) as exc:
            raise BadRequest(exc.message) from None
        except StoreUnavailable as exc:
            raise StoreDown(exc.message) from None
        if version is not None and version != record.version:
            raise BadRequest(
                f"sequence {describe_id(params.id)} runs on {name!r} version {record.version}, not version {version}"
            )
        return self.pinned(name, record.version), record

    def sequence_step(
        self, model: LoadedModel, features: np.ndarray, params: SequenceParams, record: SequenceRecord | None
    ) -> StepResult:
        """Run one chunk [T, F] of a sequence and store (or free) its state."""
        tensors = unpack_state(record.state, model) if record else None
        outputs = self._run(model, features, tensors, "v2")
        steps = (record.steps if record else 0) + len(features)
        packed = pack_state([outputs[out][:, 0, :] for _, out in _state_pairs(model)])
        try:
            self._store(model, params, record, steps, packed)
        except StoreUnavailable as exc:
            raise StoreDown(exc.message) from None
        return StepResult(model, outputs, steps)

    def _store(
        self, model: LoadedModel, params: SequenceParams, record: SequenceRecord | None, steps: int, packed: bytes
    ) -> None:
        name, seq = model.name, params.id
        if record is None:
            record = self.store.start(name, seq, SequenceRecord(name, model.version, steps, packed))
            if params.end:
                self.store.end(name, seq, record.steps, record.generation)
            return
        if params.end:
            done = self.store.end(name, seq, record.steps, record.generation)
        else:
            done = self.store.advance(name, seq, record.steps, record.advanced(steps, packed))
        if not done:
            raise Conflict(
                f"sequence {describe_id(seq)} of {name!r} changed while this request ran (another request of the "
                "same sequence, a restart, an end or its idle timeout); send the requests of one sequence one "
                "after another"
            )

    # ---------------------------------------------------------------------------------------------- shared

    def pinned(self, name: str, version: int) -> LoadedModel:
        """The version a stream started on, as long as it is loaded (409 once it is gone)."""
        try:
            return streamable(self.plane.get(name, version))
        except (NotFound, NotReady) as exc:
            self.plane.versions(name)  # the model itself unknown: 404, not 409
            raise Conflict(
                f"model {name!r} version {version}, which this stream started on, is no longer served "
                f"({exc.message}); restart the stream"
            ) from None

    def _run(self, model: LoadedModel, features: np.ndarray, state: list[np.ndarray] | None, protocol: str) -> Arrays:
        inputs: Arrays = {
            "features": features[None, :, :],
            "lengths": np.array([len(features)], dtype=np.int64),
        }
        for spec, tensor in zip(model.manifest.state_inputs, state or (), strict=False):
            inputs[spec.name] = np.ascontiguousarray(tensor[:, None, :], dtype=np.float32)
        self.metrics.inc(self.metrics.stream_requests, (model.name, protocol))
        return self.plane.infer(model, inputs)


def streamable(model: LoadedModel) -> LoadedModel:
    """Only models with state inputs can stream: a bidirectional model's backward pass needs the whole sequence."""
    if not model.manifest.state_inputs:
        raise BadRequest(
            f"model {model.name!r} version {model.version} is bidirectional: its backward direction reads each "
            "sequence from its end, so it cannot answer timestep by timestep; send whole sequences to predict"
        )
    return model


def _state_pairs(model: LoadedModel) -> list[tuple[TensorSpec, str]]:
    """Each state input with the output that carries it on (h0 -> hn, c0 -> cn)."""
    outputs = state_names(model.manifest.model)[1]
    return list(zip(model.manifest.state_inputs, outputs, strict=True))


def _token_tensors(state: StreamState, model: LoadedModel) -> list[np.ndarray]:
    expected = [(spec.name, (int(spec.shape[0]), int(spec.shape[2]))) for spec in model.manifest.state_inputs]
    got = [(name, tuple(t.shape)) for name, t in state.tensors.items()]
    if got != expected:
        raise BadRequest(f"state token holds tensors {got}, {model.name!r} version {model.version} needs {expected}")
    return list(state.tensors.values())


def pack_state(tensors: list[np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(t, dtype="<f4").tobytes() for t in tensors)


def unpack_state(raw: bytes, model: LoadedModel) -> list[np.ndarray]:
    """The stored state as [layers*dirs, hidden] arrays, by the model's state input shapes."""
    shapes = [(int(spec.shape[0]), int(spec.shape[2])) for spec in model.manifest.state_inputs]
    needed = sum(a * b for a, b in shapes) * 4
    if len(raw) != needed:
        raise Conflict(f"stored sequence state has {len(raw)} bytes, {model.name!r} needs {needed}; restart it")
    flat = np.frombuffer(raw, dtype="<f4")
    out, offset = [], 0
    for rows, hidden in shapes:
        out.append(flat[offset : offset + rows * hidden].reshape(rows, hidden))
        offset += rows * hidden
    return out
