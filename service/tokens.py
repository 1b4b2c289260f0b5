"""Signed stream-state tokens: the v1 stream API keeps a stream's RNN state in the client, not in the server.

A token is compact binary, then base64url without padding. The binary is a 9-byte header (magic `SQST`, a format
byte, the body's length as little-endian uint32), the body (model name, version, the timesteps the stream has
seen, the unix time it was issued, then each state tensor: its name, its 2-D shape [layers*dirs, hidden] and its
little-endian float32 bytes, so the state round-trips exactly) and an HMAC-SHA256 of header and body under the
server's key. Decoding checks, in order: the base64url alphabet, the magic and format, the declared length (so a
cut token is reported as truncated, with how many bytes arrived), the MAC (`hmac.compare_digest`), and only then
trusts any field of the body: the model it was made for, then its age against the TTL. Every refusal is one
`TokenError` whose `reason` names the case and whose message tells the client what to do.

The key is `SEQSERVE_STATE_KEY` when configured; otherwise `resolve_key` makes a random one shared by the workers
of one server through a `state.key` file in the server's state folder (created once, atomically: a private temp
file hard-linked into place; the loser of a race reads the winner's). No message or repr ever shows the key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

MAGIC = b"SQST"
FORMAT = 1
KEY_FILE = "state.key"
MIN_KEY_CHARS = 16
GENERATED_KEY_BYTES = 32
_HEADER = struct.Struct("<4sBI")  # magic, format, body length
_SCALARS = struct.Struct("<qQd")  # version, steps, issued
_SHAPE = struct.Struct("<II")
_U8, _U16 = struct.Struct("<B"), struct.Struct("<H")  # name lengths, tensor count
_MAC_BYTES = hashlib.sha256().digest_size
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # in the order of their values
_TO_BASE64 = bytes.maketrans(b"-_", b"+/")
_UNUSED_BITS = {0: 0, 2: 0b1111, 3: 0b11}  # of the last character, by the encoding's length mod 4: zero when canonical
_RESEND = "send the token exactly as the last answer gave it"

Reason = Literal["malformed", "truncated", "bad_signature", "other_model", "expired"]


class TokenError(Exception):
    """A refused state token: `reason` is one of `Reason`, `message` is meant for the client."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class StreamState:
    """What a token carries. `tensors`: name -> float32 [layers*dirs, hidden], in order (e.g. h then c)."""

    model: str
    version: int
    steps: int
    issued: float
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)


class TokenCodec:
    """Encodes and verifies state tokens under one key; tokens older than `ttl_seconds` are refused."""

    __slots__ = ("_key", "ttl_seconds")

    def __init__(self, key: bytes, ttl_seconds: float) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"the state key must have at least {MIN_KEY_CHARS} bytes, got {len(key)}")
        if not ttl_seconds > 0:
            raise ValueError(f"SEQSERVE_STATE_TTL must be > 0 seconds, got {ttl_seconds}")
        self._key = bytes(key)
        self.ttl_seconds = float(ttl_seconds)

    def __repr__(self) -> str:
        return f"TokenCodec(ttl_seconds={self.ttl_seconds:g})"

    def encode(self, state: StreamState) -> str:
        body = _pack_body(state)
        signed = _HEADER.pack(MAGIC, FORMAT, len(body)) + body
        return _b64encode(signed + self._mac(signed))

    def decode(self, token: str, model: str, now: float | None = None) -> StreamState:
        text = _clean(token)
        raw = _b64decode(text)
        signed = _framed(raw)
        if not hmac.compare_digest(raw[len(signed) :], self._mac(signed)):
            raise _bad_signature()
        rest = len(text) % 4  # 1: a character past a whole encoding, which decoding left out
        if rest == 1 or _BASE64URL.index(text[-1].encode("ascii")) & _UNUSED_BITS[rest]:
            raise _bad_signature()  # the same bytes, but not the characters that were signed: altered all the same
        state = _unpack_body(signed[_HEADER.size :])
        if state.model != model:
            raise TokenError("other_model", f"state token was made for model {state.model!r}, not {model!r}")
        self._check_age(state, time.time() if now is None else now)
        return state

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._key, signed, hashlib.sha256).digest()

    def _check_age(self, state: StreamState, now: float) -> None:
        overdue = now - state.issued - self.ttl_seconds
        if overdue > 0:
            raise TokenError(
                "expired",
                f"state token expired {overdue:.0f} s ago (SEQSERVE_STATE_TTL is {self.ttl_seconds:g} s); "
                'restart the stream with "state": null',
            )


def _bad_signature() -> TokenError:
    return TokenError(
        "bad_signature",
        "state token has a bad signature: it was altered or signed with another key "
        "(do all replicas share SEQSERVE_STATE_KEY?)",
    )


def _malformed(detail: str) -> TokenError:
    return TokenError("malformed", f"state token is malformed: {detail}; {_RESEND}")


def _clean(token: object) -> str:
    if not isinstance(token, str):
        raise _malformed(f"expected a string, got {type(token).__name__}")
    text = token.strip().rstrip("=")
    if not text:
        raise _malformed("it is empty")
    return text


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """base64url without padding. A length of 4n+1 cannot be a whole encoding: a cut token, decoded up to the cut.
    C-level passes only (a 2 KB state decodes in ~10 us, a third of `base64.urlsafe_b64decode` after a regex)."""
    data = text.encode("ascii", errors="replace")  # a non-ASCII character becomes "?", refused below
    if data.translate(None, _BASE64URL):
        bad = next(c for c in text if not (c.isascii() and (c.isalnum() or c in "-_")))
        raise _malformed(f"character {bad!r} is not base64url (A-Z a-z 0-9 - _)")
    usable = data[: len(data) - 1] if len(data) % 4 == 1 else data
    try:
        return binascii.a2b_base64(usable.translate(_TO_BASE64) + b"=" * (-len(usable) % 4), strict_mode=True)
    except binascii.Error as e:  # unreachable for the alphabet above; kept so no decoding error escapes untyped
        raise _malformed(f"not base64url ({e})") from e


def _framed(raw: bytes) -> bytes:
    """The signed part (header + body) after checking magic, format and the declared length against what came."""
    prefix = MAGIC + bytes([FORMAT])
    if len(raw) < _HEADER.size:
        if raw and prefix.startswith(raw[: len(prefix)]):
            raise TokenError(
                "truncated",
                f"state token is truncated ({len(raw)} bytes, its header alone has {_HEADER.size}); {_RESEND}",
            )
        raise _malformed("not a seqserve state token")
    magic, fmt, body_length = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise _malformed("not a seqserve state token")
    if fmt != FORMAT:
        raise _malformed(f"token format {fmt}, this server reads format {FORMAT}")
    expected = _HEADER.size + body_length + _MAC_BYTES
    if len(raw) < expected:
        raise TokenError("truncated", f"state token is truncated ({len(raw)} of {expected} bytes); {_RESEND}")
    if len(raw) > expected:
        raise _malformed(f"{len(raw) - expected} extra bytes follow its end")
    return raw[: expected - _MAC_BYTES]


def _pack_body(state: StreamState) -> bytes:
    if not 0 <= state.version < 2**63 or not 0 <= state.steps < 2**64:
        raise ValueError(f"version {state.version} and steps {state.steps} must be >= 0 and fit 64 bits")
    if len(state.tensors) > 255:
        raise ValueError(f"a state token holds at most 255 tensors, got {len(state.tensors)}")
    parts = [_pack_name(state.model, _U16), _SCALARS.pack(state.version, state.steps, state.issued)]
    parts.append(_U8.pack(len(state.tensors)))
    for name, tensor in state.tensors.items():
        array = np.asarray(tensor)
        if array.ndim != 2:
            raise ValueError(f"state tensor {name!r} must be 2-D [layers*dirs, hidden], got shape {array.shape}")
        parts += [_pack_name(name, _U8), _SHAPE.pack(*array.shape), array.astype("<f4", copy=False).tobytes()]
    return b"".join(parts)


def _pack_name(name: str, length: struct.Struct) -> bytes:
    data = name.encode("utf-8")
    limit = 2 ** (8 * length.size) - 1
    if not 0 < len(data) <= limit:
        raise ValueError(f"name {name!r} must have 1 to {limit} UTF-8 bytes")
    return length.pack(len(data)) + data


class _Reader:
    """Bounds-checked reads of a verified body (a failure here means a token this server cannot read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise _malformed("its body ends early")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int | float, ...]:
        return layout.unpack(self.take(layout.size))

    def name(self, length: struct.Struct) -> str:
        (size,) = self.unpack(length)
        try:
            return self.take(int(size)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _malformed("a name is not UTF-8") from e


def _unpack_body(body: bytes) -> StreamState:
    reader = _Reader(body)
    model = reader.name(_U16)
    version, steps, issued = reader.unpack(_SCALARS)
    (count,) = reader.unpack(_U8)
    tensors: dict[str, np.ndarray] = {}
    for _ in range(int(count)):
        name = reader.name(_U8)
        rows, cols = (int(n) for n in reader.unpack(_SHAPE))
        data = reader.take(4 * rows * cols)
        tensors[name] = np.frombuffer(data, dtype="<f4").reshape(rows, cols).astype(np.float32)
    if reader.at != len(body):
        raise _malformed("its body has bytes after the last tensor")
    return StreamState(model, int(version), int(steps), float(issued), tensors)


def resolve_key(configured: str, folder: Path | None) -> tuple[bytes, bool]:
    """The signing key and whether it was generated (then tokens die with the server unless replicas share it).

    `configured` (SEQSERVE_STATE_KEY) wins; at least 16 characters. Otherwise a random key, shared through
    `folder/state.key` by every worker of one server, or private to this process when `folder` is None."""
    if configured:
        if len(configured) < MIN_KEY_CHARS:
            raise ValueError(
                f"SEQSERVE_STATE_KEY has {len(configured)} characters; use at least {MIN_KEY_CHARS}, e.g. the output "
                "of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return configured.encode("utf-8"), False
    if folder is None:
        return secrets.token_bytes(GENERATED_KEY_BYTES), True
    return _shared_key(Path(folder)), True


def _shared_key(folder: Path) -> bytes:
    target = folder / KEY_FILE
    if not target.exists():
        _publish_key(folder, target)
    key = target.read_bytes()
    if len(key) != GENERATED_KEY_BYTES:
        raise ValueError(f"{target}: {len(key)} bytes, a generated state key has {GENERATED_KEY_BYTES}; delete it")
    return key


def _publish_key(folder: Path, target: Path) -> None:
    """Write a complete private file, then hard-link it into place: the first link wins, nobody sees half a key."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".state-key-", dir=folder)  # mode 0600
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(secrets.token_bytes(GENERATED_KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another worker won the race; its key is complete
            os.link(staging, target)
    finally:
        os.unlink(staging)
