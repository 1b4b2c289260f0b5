"""Request bodies for every wire format, written to files for wrk, and checks of the answers they get.

One seeded float32 batch per scenario is encoded every way: our v1 JSON (`{"sequences": ...}`, numbers as orjson
writes float32, i.e. the shortest repr that round-trips, as a numpy client sending orjson would), our v1 raw
float32 body with `Seqserve-Shape`, the V2 binary tensor extension, and V2 JSON. All carry the same numbers, so
every contender answers the same question, and each answer is checked against onnxruntime run in-process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from bench.fixtures import FEATURES

V2_HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Scenario:
    batch: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.batch}x{self.steps}"

    def features(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng([seed, self.batch, self.steps])
        return rng.normal(size=(self.batch, self.steps, FEATURES)).astype(np.float32)


SCENARIOS = (Scenario(1, 50), Scenario(64, 50), Scenario(1, 500))


def scenario(name: str) -> Scenario:
    """The scenario named `BxT` ("64x50"); ValueError naming the others for any other name."""
    found = next((s for s in SCENARIOS if s.name == name), None)
    if found is None:
        raise ValueError(f"scenario is one of {[s.name for s in SCENARIOS]}")
    return found


@dataclass(frozen=True)
class Body:
    """What one request sends: the body file and its headers ("Name: value")."""

    path: Path
    headers: tuple[str, ...]

    def read(self) -> bytes:
        return self.path.read_bytes()

    def header_dict(self) -> dict[str, str]:
        return dict(h.split(": ", 1) for h in self.headers)


def v1_json(x: np.ndarray) -> bytes:
    return orjson.dumps({"sequences": x}, option=orjson.OPT_SERIALIZE_NUMPY)


def v1_binary(x: np.ndarray) -> tuple[bytes, tuple[str, ...]]:
    shape = ",".join(str(n) for n in x.shape)
    return x.astype("<f4").tobytes(order="C"), ("Content-Type: application/octet-stream", f"Seqserve-Shape: {shape}")


def v2_binary(x: np.ndarray) -> tuple[bytes, tuple[str, ...]]:
    raw = x.astype("<f4").tobytes(order="C")
    features = {"name": "features", "shape": list(x.shape), "datatype": "FP32"}
    header = {
        "inputs": [{**features, "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = ("Content-Type: application/octet-stream", f"{V2_HEADER_LENGTH}: {len(head)}")
    return head + raw, headers


def v2_json(x: np.ndarray) -> bytes:
    request = {
        "inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}],
        "outputs": [{"name": "probabilities"}],
    }
    return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)


ENCODERS = {
    "v1-json": lambda x: (v1_json(x), ("Content-Type: application/json",)),
    "v1-binary": v1_binary,
    "v2-binary": v2_binary,
    "v2-json": lambda x: (v2_json(x), ("Content-Type: application/json",)),
}


def write_bodies(folder: Path, scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict[tuple[str, str], Body]:
    """Every (format, scenario name) body, written once into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for scenario in scenarios:
        x = scenario.features()
        for fmt, encode in ENCODERS.items():
            data, headers = encode(x)
            path = folder / f"{fmt}-{scenario.name}.body"
            path.write_bytes(data)
            bodies[fmt, scenario.name] = Body(path, headers)
    return bodies


# ------------------------------------------------------------------------------------------ answer checks


class BadAnswer(AssertionError):
    """A contender's answer is not the right one: it must not be benchmarked."""


def _close(name: str, got: np.ndarray, expected: np.ndarray, atol: float = 1e-4) -> None:
    if got.shape != expected.shape:
        raise BadAnswer(f"{name}: shape {got.shape}, expected {expected.shape}")
    worst = float(np.max(np.abs(got - expected)))
    if not worst <= atol:
        raise BadAnswer(f"{name}: probabilities differ from onnxruntime by {worst:.2e} (> {atol:.0e})")


def _per_sequence(name: str, sequences: list, expected: np.ndarray) -> None:
    """`sequences[i]` holds `labels` [T] and `probabilities` [T, C] of sequence i (v1 and the naive server)."""
    if len(sequences) != expected.shape[0]:
        raise BadAnswer(f"{name}: {len(sequences)} sequences, expected {expected.shape[0]}")
    probabilities = np.asarray([s["probabilities"] for s in sequences], dtype=np.float32)
    _close(name, probabilities, expected)
    labels = np.asarray([s["labels"] for s in sequences])
    if labels.shape != expected.shape[:2]:
        raise BadAnswer(f"{name}: labels of shape {labels.shape}, expected {expected.shape[:2]}")


def check_v1_json(name: str, body: bytes, headers: dict[str, str], expected: np.ndarray) -> None:
    answer = orjson.loads(body)
    sequences = answer.get("predictions", answer.get("sequences"))
    if not isinstance(sequences, list):
        raise BadAnswer(f"{name}: no per-sequence predictions in {sorted(answer)}")
    _per_sequence(name, sequences, expected)


def check_v2(name: str, body: bytes, headers: dict[str, str], expected: np.ndarray) -> None:
    """A V2 answer, JSON or with the binary extension; `probabilities` [B, T, C] FP32."""
    lowered = {k.lower(): v for k, v in headers.items()}
    json_length = int(lowered.get(V2_HEADER_LENGTH.lower(), len(body)))
    answer, offset = orjson.loads(body[:json_length]), json_length
    for output in answer.get("outputs", []):
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = np.frombuffer(body[offset : offset + size], dtype="<f4")
            offset += size
        else:
            data = np.asarray(output["data"], dtype=np.float32)
        if output["name"] == "probabilities":
            _close(name, data.reshape(output["shape"]), expected)
            return
    raise BadAnswer(f"{name}: no `probabilities` output in {answer}")


def check_constant(name: str, body: bytes, headers: dict[str, str], expected: np.ndarray) -> None:
    if orjson.loads(body) != {"ok": True}:
        raise BadAnswer(f"{name}: expected the constant {{'ok': true}}, got {body[:80]!r}")


CHECKS = {"v1-json": check_v1_json, "v2": check_v2, "constant": check_constant}
