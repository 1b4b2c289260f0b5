"""Signed stream-state tokens: exact round trips, every refusal with its reason and message, the shared key file."""

from __future__ import annotations

import base64
import multiprocessing
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.tokens import KEY_FILE, StreamState, TokenCodec, TokenError, resolve_key
from tests.conftest import REPO_ROOT

KEY = b"0123456789abcdef0123456789abcdef"
TTL = 86400.0
ISSUED = 1_750_000_000.25
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def lstm_state(layers: int = 2, hidden: int = 8, seed: int = 0) -> StreamState:
    rng = np.random.default_rng(seed)
    tensors = {name: rng.normal(size=(layers, hidden)).astype(np.float32) for name in ("h", "c")}
    return StreamState("lstm_step", 3, 1234, ISSUED, tensors)


def refusal(codec: TokenCodec, token: object, model: str = "lstm_step", now: float = ISSUED) -> TokenError:
    with pytest.raises(TokenError) as caught:
        codec.decode(token, model, now=now)  # type: ignore[arg-type]
    return caught.value


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(KEY, TTL)


@pytest.mark.parametrize(
    "tensors",
    [
        {"h": np.array([[0.1, -0.0, np.float32(1e-45), np.finfo(np.float32).max]], dtype=np.float32)},  # GRU/RNN
        lstm_state(layers=2, hidden=128).tensors,
        {"h": np.array([[np.inf, -np.inf, np.nan]], dtype=np.float32)},
    ],
)
def test_round_trip_is_exact(codec: TokenCodec, tensors: dict[str, np.ndarray]) -> None:
    state = StreamState("gru_last", 7, 2**40, ISSUED, tensors)
    decoded = codec.decode(codec.encode(state), "gru_last", now=ISSUED + 1)
    assert (decoded.model, decoded.version, decoded.steps, decoded.issued) == ("gru_last", 7, 2**40, ISSUED)
    assert list(decoded.tensors) == list(tensors)  # order kept: h then c
    for name, array in tensors.items():
        assert decoded.tensors[name].dtype == np.float32
        assert decoded.tensors[name].tobytes() == array.tobytes()  # bit for bit, NaN and -0.0 included
        decoded.tensors[name] += 1  # writable, owned by the caller


def test_token_is_compact_base64url(codec: TokenCodec) -> None:
    token = codec.encode(lstm_state(layers=2, hidden=128))
    payload = 2 * 2 * 128 * 4
    assert set(token) <= set(ALPHABET)
    assert payload < len(raw(token)) < payload + 100
    assert len(token) == -(-len(raw(token)) * 4 // 3)  # no padding


def test_a_flipped_bit_anywhere_is_refused(codec: TokenCodec) -> None:
    data = raw(codec.encode(lstm_state(layers=1, hidden=4)))
    reasons: dict[str, int] = {}
    for bit in range(8 * len(data)):
        altered = bytearray(data)
        altered[bit // 8] ^= 1 << (bit % 8)
        error = refusal(codec, text(bytes(altered)))
        reasons[error.reason] = reasons.get(error.reason, 0) + 1
        if bit >= 8 * 9:  # past the header (magic, format, length): only the signature can tell
            assert error.reason == "bad_signature", bit
            assert "altered or signed with another key" in error.message
            assert "SEQSERVE_STATE_KEY?" in error.message
    assert set(reasons) == {"malformed", "truncated", "bad_signature"}


def test_a_changed_character_anywhere_is_refused(codec: TokenCodec) -> None:
    token = codec.encode(lstm_state(layers=1, hidden=4))
    for i, char in enumerate(token):
        swapped = "B" if char == "A" else "A"
        assert refusal(codec, token[:i] + swapped + token[i + 1 :]).reason in {
            "malformed",
            "truncated",
            "bad_signature",
        }


def test_a_changed_unused_bit_of_the_last_character_is_refused(codec: TokenCodec) -> None:
    """The last character of a 4n+2 or 4n+3 long token has low bits that decode to nothing: same bytes, yet not
    the token that was signed."""
    token = next(t for h in range(1, 5) if len(t := codec.encode(lstm_state(layers=1, hidden=h))) % 4)
    twin = token[:-1] + ALPHABET[ALPHABET.index(token[-1]) ^ 1]
    assert raw(twin) == raw(token)
    assert refusal(codec, twin).reason == "bad_signature"


def test_a_character_added_at_the_end_is_refused(codec: TokenCodec) -> None:
    """A token one character longer than a whole encoding decodes to the same bytes when that character is cut off;
    it is not the token that was signed all the same."""
    token = next(t for h in range(1, 5) if len(t := codec.encode(lstm_state(layers=1, hidden=h))) % 4 == 0)
    for extra in "AQw_":
        assert refusal(codec, token + extra).reason == "bad_signature", extra


def test_truncated_tokens_say_how_much_arrived(codec: TokenCodec) -> None:
    token = codec.encode(lstm_state(layers=1, hidden=16))
    full = len(raw(token))
    error = refusal(codec, token[:100])
    assert error.reason == "truncated"
    assert f"(75 of {full} bytes)" in error.message
    assert "send the token exactly as the last answer gave it" in error.message
    for cut in range(2, len(token)):
        assert refusal(codec, token[:cut]).reason == "truncated", cut


def test_another_key_is_a_bad_signature(codec: TokenCodec) -> None:
    token = TokenCodec(b"another key of 32 bytes, really!", TTL).encode(lstm_state())
    error = refusal(codec, token)
    assert error.reason == "bad_signature"
    assert error.message == (
        "state token has a bad signature: it was altered or signed with another key "
        "(do all replicas share SEQSERVE_STATE_KEY?)"
    )


def test_another_model(codec: TokenCodec) -> None:
    error = refusal(codec, codec.encode(lstm_state()), model="gru_last")
    assert error.reason == "other_model"
    assert error.message == "state token was made for model 'lstm_step', not 'gru_last'"


def test_expiry_counts_from_issue_time(codec: TokenCodec) -> None:
    token = codec.encode(lstm_state())
    assert codec.decode(token, "lstm_step", now=ISSUED + TTL).steps == 1234  # the last valid instant
    error = refusal(codec, token, now=ISSUED + TTL + 3600)
    assert error.reason == "expired"
    assert error.message == (
        'state token expired 3600 s ago (SEQSERVE_STATE_TTL is 86400 s); restart the stream with "state": null'
    )


def test_the_model_is_checked_before_the_age(codec: TokenCodec) -> None:
    assert refusal(codec, codec.encode(lstm_state()), model="other", now=ISSUED + 2 * TTL).reason == "other_model"


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        (None, "expected a string, got NoneType"),
        (b"abc", "expected a string, got bytes"),
        ("not base64!", "character ' ' is not base64url"),
        ("abc+def/", "character '+' is not base64url"),
        ("éé", "character 'é' is not base64url"),
        ("hello", "not a seqserve state token"),
        ("R0lGODlhAQABAIAAAP___wAAACwAAAAAAQABAAACAkQBADs", "not a seqserve state token"),
    ],
)
def test_garbage_is_malformed(codec: TokenCodec, token: object, detail: str) -> None:
    error = refusal(codec, token)
    assert error.reason == "malformed"
    assert detail in error.message
    assert error.message.startswith("state token is malformed: ")


def test_an_unknown_format_and_trailing_bytes_are_malformed(codec: TokenCodec) -> None:
    data = raw(codec.encode(lstm_state()))
    assert "format 9, this server reads format 1" in refusal(codec, text(data[:4] + b"\x09" + data[5:])).message
    assert "3 extra bytes follow its end" in refusal(codec, text(data + b"abc")).message


def test_padding_and_surrounding_whitespace_are_tolerated(codec: TokenCodec) -> None:
    token = codec.encode(lstm_state())
    padded = token + "=" * (-len(token) % 4)
    assert codec.decode(f" {padded}\n", "lstm_step", now=ISSUED).steps == 1234


def test_the_key_never_shows(codec: TokenCodec) -> None:
    assert KEY.decode() not in repr(codec)
    assert "0123456789abcdef" not in repr(codec)
    messages = [refusal(codec, t).message for t in ("", "x!", codec.encode(lstm_state())[:50])]
    assert not any("0123456789abcdef" in m for m in messages)


def test_codec_refuses_weak_settings() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenCodec(b"short", TTL)
    with pytest.raises(ValueError, match="SEQSERVE_STATE_TTL must be > 0"):
        TokenCodec(KEY, 0)


def test_encode_refuses_what_it_cannot_carry(codec: TokenCodec) -> None:
    with pytest.raises(ValueError, match="must be 2-D"):
        codec.encode(StreamState("m", 1, 0, ISSUED, {"h": np.zeros((1, 2, 3), np.float32)}))
    with pytest.raises(ValueError, match="must be >= 0"):
        codec.encode(StreamState("m", 1, -1, ISSUED, {}))


def test_configured_key() -> None:
    assert resolve_key("x" * 16, None) == (b"x" * 16, False)
    assert resolve_key("ключ-" * 4, None) == (("ключ-" * 4).encode(), False)
    with pytest.raises(ValueError, match="SEQSERVE_STATE_KEY has 15 characters; use at least 16") as caught:
        resolve_key("s3cret-s3cret-s", None)
    assert "s3cret" not in str(caught.value)


def test_generated_key_without_folder_is_per_process() -> None:
    first, generated = resolve_key("", None)
    assert generated
    assert len(first) == 32
    assert resolve_key("", None)[0] != first


def test_generated_key_is_shared_through_the_folder(tmp_path: Path) -> None:
    key, generated = resolve_key("", tmp_path)
    assert generated
    assert resolve_key("", tmp_path) == (key, True)
    path = tmp_path / KEY_FILE
    assert path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]  # no staging file left behind


def test_a_damaged_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"too short")
    with pytest.raises(ValueError, match="9 bytes, a generated state key has 32; delete it"):
        resolve_key("", tmp_path)


def _race_for_key(folder: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    results.put(resolve_key("", Path(folder))[0])


def test_processes_racing_for_the_key_file_all_get_one_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # as gunicorn makes its workers
    racers = 6
    barrier, results = context.Barrier(racers), context.Queue()
    processes = [context.Process(target=_race_for_key, args=(str(tmp_path), barrier, results)) for _ in range(racers)]
    for process in processes:
        process.start()
    keys = [results.get(timeout=60) for _ in range(racers)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(set(keys)) == 1
    assert keys[0] == (tmp_path / KEY_FILE).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]


@pytest.mark.parametrize("module", ["tokens", "sequences"])
def test_modules_import_neither_flask_nor_torch(module: str) -> None:
    """Loaded on their own (the `service` package itself imports Flask): numpy, the standard library and redis."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('{module}', 'service/{module}.py')\n"
        "m = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        "print(sorted({'flask', 'torch', 'onnxruntime', 'service'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
