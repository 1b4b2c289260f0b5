"""marshmallow schemas for every request body, header set and path parameter.

The numeric payload is the hot path: `SequencesField` and `TensorDataField` convert nested lists to a float32
array in one vectorised step (`np.asarray`, a shape check, `np.isfinite`) after a C-level pass over the leaf
types (`set(map(type, ...))`), and walk the nested lists in Python only when something is wrong, to say where
(`sequences[3][17]: expected 6 features, got 5`). Errors keep marshmallow's nested dict shape, so `details` gives
the path as keys (sequence index, timestep index).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, starmap
from typing import Any, ClassVar

import numpy as np
from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate, validates_schema

from modelrepo.layout import NAME_PATTERN

FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_TENSOR_DEPTH = 32  # numpy allows 64 dimensions; our models take at most 3
OUTPUTS = ("labels", "probabilities", "logits")
V2_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


@dataclass(frozen=True)
class Batch:
    """A validated batch: features [B, T, F] float32, zero-padded to the longest sequence; lengths [B] int64."""

    features: np.ndarray
    lengths: np.ndarray


# ----------------------------------------------------------------------------------------- numeric payloads


def _leaf_types(value: Sequence[Any], depth: int) -> set[type]:
    """Types of the leaves of a list nested `depth` deep, iterated in C. Raises TypeError when an inner level
    is not iterable (a number where a list belongs)."""
    items: Any = value
    for _ in range(depth - 1):
        items = chain.from_iterable(items)
    return set(map(type, items))


_NUMBER_TYPES = {float, int}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _number_problem(value: Any) -> str | None:
    if type(value) not in _NUMBER_TYPES:
        return f"expected a number, got {_describe(value)}"
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        return f"value {value!r} is not a finite float32"
    return None


class SequencesField(fields.Field):
    """`[[[f1..fF], ...], ...]`: a batch of variable-length sequences of timesteps; a timestep is a list of F
    numbers or an object keyed by feature name. Deserialises to a `Batch`."""

    def __init__(self, feature_names: Sequence[str], max_sequences: int, max_timesteps: int, **kwargs: Any):
        super().__init__(required=True, **kwargs)
        self.feature_names = list(feature_names)
        self._row = struct.Struct(f"{len(self.feature_names)}d")  # one timestep: F native doubles
        self.max_sequences = max_sequences
        self.max_timesteps = max_timesteps

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Batch:
        if not isinstance(value, list):
            raise ValidationError(f"expected a list of sequences, got {_describe(value)}")
        if not value:
            raise ValidationError("empty batch: send at least one sequence")
        if len(value) > self.max_sequences:
            raise ValidationError(f"{len(value)} sequences exceed the limit of {self.max_sequences} per request")
        self._check_lengths(value)
        batch = self._fast(value)
        return batch if batch is not None else self._slow(value)

    def _check_lengths(self, value: list[Any]) -> None:
        errors: dict[int, list[str]] = {}
        for i, seq in enumerate(value):
            if not isinstance(seq, list):
                errors[i] = [f"expected a sequence (list of timesteps), got {_describe(seq)}"]
            elif not seq:
                errors[i] = ["empty sequence: send at least one timestep"]
            elif len(seq) > self.max_timesteps:
                errors[i] = [f"{len(seq)} timesteps exceed the limit of {self.max_timesteps} per sequence"]
        if errors:
            raise ValidationError(errors)

    def _fast(self, value: list[list[Any]]) -> Batch | None:
        """C-level passes only: every timestep packed by one `struct.Struct` of F doubles, which refuses a timestep
        of any other length and any string, null, list or object in it (3x faster than `array('d', ...)` on the
        19,200 numbers of a 64x50 batch, and no separate length pass), then vectorised checks. Booleans would pass
        as 0/1, so the leaves whose value is exactly 0 or 1 have their type checked. Anything odd returns None: the
        slow path says where."""
        width = len(self.feature_names)
        try:
            packed = b"".join(starmap(self._row.pack, chain.from_iterable(value)))
        except (TypeError, ValueError, OverflowError, struct.error):
            return None
        flat = np.frombuffer(packed, dtype=np.float64)
        if suspects := np.flatnonzero((flat == 0) | (flat == 1)).tolist():
            steps = list(chain.from_iterable(value))
            if not {type(steps[i // width][i % width]) for i in suspects} <= _NUMBER_TYPES:
                return None
        return self._batch(flat, list(map(len, value)))

    def from_numbers(self, flat: np.ndarray, lengths: list[int]) -> Batch | None:
        """The batch from numbers that a decoder of its own read, without a Python object per number (service/
        codecs.py): `flat` holds every timestep's F numbers as float64, sequence by sequence, `lengths` each
        sequence's timestep count. The caller has checked that every timestep is F numbers (no booleans); this
        applies the limits and the rest of `_deserialize`'s checks, and returns None for anything they refuse (the
        schema, run on the body, then says what and where)."""
        if not 1 <= len(lengths) <= self.max_sequences or not 1 <= min(lengths) <= max(lengths) <= self.max_timesteps:
            return None
        if flat.size != sum(lengths) * len(self.feature_names):
            return None
        return self._batch(flat, lengths)

    def _batch(self, flat: np.ndarray, counts: list[int]) -> Batch | None:
        """float64 timesteps, sequence by sequence, as a float32 batch padded with zeros; None when a value is
        beyond float32 (the slow path locates it)."""
        width = len(self.feature_names)
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, located by the slow path
            rows = flat.astype(np.float32).reshape(-1, width)
        if not np.isfinite(rows).all():
            return None
        lengths = np.array(counts, dtype=np.int64)
        if (lengths == lengths[0]).all():
            return Batch(rows.reshape(len(counts), int(lengths[0]), width), lengths)
        longest = int(lengths.max())
        features = np.zeros((len(counts), longest, width), dtype=np.float32)
        features[np.arange(longest)[None, :] < lengths[:, None]] = rows  # row-major: sequence by sequence
        return Batch(features, lengths)

    def _slow(self, value: list[list[Any]]) -> Batch:
        """Walk every timestep: convert objects keyed by feature name, and collect up to 10 located errors."""
        n_features = len(self.feature_names)
        errors: dict[int, dict[int, list[str] | dict[int | str, list[str]]]] = {}
        count = 0
        rows: list[list[list[float]]] = []
        for i, seq in enumerate(value):
            converted = []
            for t, step in enumerate(seq):
                row, problem = self._timestep(step, n_features)
                if problem is not None:
                    errors.setdefault(i, {})[t] = problem
                    count += 1
                    if count >= 10:
                        raise ValidationError(errors)
                converted.append(row)
            rows.append(converted)
        if errors:
            raise ValidationError(errors)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        features = np.zeros((len(rows), int(lengths.max()), n_features), dtype=np.float32)
        for i, seq in enumerate(rows):
            features[i, : lengths[i]] = seq
        return Batch(features, lengths)

    def _timestep(self, step: Any, n_features: int) -> tuple[list[float], Any]:
        keyed = isinstance(step, dict)
        if keyed:
            missing = [n for n in self.feature_names if n not in step]
            unknown = sorted(set(step) - set(self.feature_names))
            if missing or unknown:
                parts = [
                    f"missing features {missing}" if missing else "",
                    f"unknown features {unknown}" if unknown else "",
                ]
                return [], ["; ".join(p for p in parts if p) + f" (expected {self.feature_names})"]
            step = [step[n] for n in self.feature_names]
        elif not isinstance(step, list):
            return [], [f"expected a timestep (list of {n_features} numbers or object), got {_describe(step)}"]
        if len(step) != n_features:
            return [], [f"expected {n_features} features, got {len(step)}"]
        problems = {f: [p] for f, x in enumerate(step) if (p := _number_problem(x)) is not None}
        if problems:
            return [], {(self.feature_names[f] if keyed else f): p for f, p in problems.items()}
        return step, None


class TimestepsField(SequencesField):
    """`[[f1..fF], ...]`: the timesteps of one stream request (one sequence); deserialises to features [T, F].
    Errors are located as `timesteps[t][f]`."""

    def __init__(self, feature_names: Sequence[str], max_timesteps: int, **kwargs: Any):
        super().__init__(feature_names, 1, max_timesteps, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> np.ndarray:
        if not isinstance(value, list):
            raise ValidationError(f"expected a list of timesteps, got {_describe(value)}")
        if not value:
            raise ValidationError("empty: send at least one timestep")
        if len(value) > self.max_timesteps:
            raise ValidationError(f"{len(value)} timesteps exceed the limit of {self.max_timesteps} per request")
        try:
            batch = self._fast([value]) or self._slow([value])
        except ValidationError as exc:  # located in sequence 0: drop that level
            messages = exc.messages
            raise ValidationError(messages[0] if isinstance(messages, dict) and 0 in messages else messages) from None
        return batch.features[0]


class TensorDataField(fields.Field):
    """V2 `data`: a flat or nested list of numbers. Deserialises to a float64 or int64 array, validated for
    type and finiteness; the shape is checked against the declared one by the caller."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> np.ndarray:
        if not isinstance(value, list):
            raise ValidationError(f"expected a list of numbers, got {_describe(value)}")
        depth, probe = 1, value
        while probe and isinstance(probe[0], list):
            depth, probe = depth + 1, probe[0]
        try:
            if _leaf_types(value, depth) <= _NUMBER_TYPES:
                array = np.asarray(value)
                if array.dtype.kind in "if" and np.isfinite(array).all():
                    return array.reshape(-1)
        except (TypeError, ValueError, OverflowError):
            pass
        raise ValidationError(_locate_flat(value))


def _locate_flat(value: list[Any]) -> str:
    """The first bad leaf of a nested list, as an index path (`data[2][5]: expected a number, got null`)."""
    depth: int | None = None

    def walk(items: list[Any], path: tuple[int, ...]) -> str | None:
        nonlocal depth
        for i, x in enumerate(items):
            here = (*path, i)
            if len(here) > MAX_TENSOR_DEPTH:  # bounded: a deeply nested body must not exhaust the stack
                return f"data{''.join(f'[{p}]' for p in here)}: nested deeper than {MAX_TENSOR_DEPTH} levels"
            if isinstance(x, list):
                if (found := walk(x, here)) is not None:
                    return found
                continue
            depth = depth or len(here)
            problem = _number_problem(x) or (None if len(here) == depth else "ragged nesting")
            if problem:
                return f"data{''.join(f'[{p}]' for p in here)}: {problem}"
        return None

    return walk(value, ()) or "data: sub-lists of different lengths"


# ---------------------------------------------------------------------------------------------------- v1


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


def id_field() -> fields.String:
    """A request's `id`, echoed in its answer (and in V2's)."""
    return fields.String(validate=validate.Length(max=128))


def outputs_field(**kwargs: Any) -> fields.List:
    """v1 `outputs`: which of labels, probabilities and logits to answer, at least one."""
    return fields.List(fields.String(validate=validate.OneOf(OUTPUTS)), validate=validate.Length(min=1), **kwargs)


class ModelPathSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Regexp(NAME_PATTERN, error="not a valid model name"))
    version = fields.Integer(
        load_default=None, strict=False, validate=validate.Range(min=1, error="must be a positive integer")
    )


@lru_cache(maxsize=256)
def predict_schema(feature_names: tuple[str, ...], max_sequences: int, max_timesteps: int) -> Schema:
    """The v1 predict body for one model: its feature count and names, and the configured limits (built once per
    distinct model signature)."""
    return Schema.from_dict(
        {
            "sequences": SequencesField(feature_names, max_sequences, max_timesteps),
            "outputs": outputs_field(load_default=lambda: ["labels", "probabilities"]),
            "id": id_field(),
        },
        name="PredictRequest",
    )(unknown=RAISE)


@lru_cache(maxsize=256)
def stream_schema(feature_names: tuple[str, ...], max_timesteps: int) -> Schema:
    """The v1 stream body for one model: this request's timesteps and the state token of the previous answer."""
    return Schema.from_dict(
        {
            "timesteps": TimestepsField(feature_names, max_timesteps),
            "state": fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1)),
            "outputs": outputs_field(load_default=lambda: ["labels", "probabilities"]),
            "id": id_field(),
        },
        name="StreamRequest",
    )(unknown=RAISE)


@lru_cache(maxsize=256)
def inspect_schema(feature_names: tuple[str, ...], max_timesteps: int) -> Schema:
    """The v1 inspect body for one model: one sequence, validated as a stream's timesteps (`sequence[t][f]`)."""
    return Schema.from_dict(
        {
            "sequence": TimestepsField(feature_names, max_timesteps),
            "id": id_field(),
        },
        name="InspectRequest",
    )(unknown=RAISE)


class TimestepDoc(fields.Raw):
    """For the OpenAPI document: a timestep is a list of numbers, or an object of numbers keyed by feature name."""

    JSON_SCHEMA: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "object", "additionalProperties": {"type": "number"}},
        ]
    }


class PredictRequestDoc(StrictSchema):
    """For the OpenAPI document only: the per-model schema above is built at load time."""

    sequences = fields.List(
        fields.List(TimestepDoc(), validate=validate.Length(min=1)),
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "sequences x timesteps x features; a timestep may be an object keyed by name"},
    )
    outputs = outputs_field()
    id = id_field()


class InspectRequestDoc(StrictSchema):
    """For the OpenAPI document only: `inspect_schema` is built per model."""

    sequence = fields.List(
        TimestepDoc(),
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "timesteps x features of one sequence; a timestep may be an object keyed by name"},
    )
    id = fields.String()


class LayerTraceDoc(Schema):
    layer = fields.Integer()
    direction = fields.String(metadata={"description": "forward or backward"})
    gates = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.List(fields.Float())),
        metadata={"description": "[T][H] each: LSTM input, forget, cell, output; GRU reset, update, new; RNN none"},
    )
    hidden = fields.List(fields.List(fields.Float()), metadata={"description": "[T][H]"})
    cell_state = fields.List(fields.List(fields.Float()), metadata={"description": "[T][H], LSTM only"})


class InspectResponseDoc(Schema):
    model_name = fields.String()
    model_version = fields.String()
    id = fields.String()
    cell = fields.String()
    head = fields.String()
    bidirectional = fields.Boolean()
    timesteps = fields.Integer()
    classes = fields.List(fields.String())
    labels = fields.List(fields.String(), metadata={"description": "[T]: the class predicted at each timestep"})
    probabilities = fields.List(fields.List(fields.Float()), metadata={"description": "[T][C], onnxruntime's"})
    layers = fields.List(fields.Nested(LayerTraceDoc), metadata={"description": "per layer and direction"})
    memory = fields.List(
        fields.List(fields.Float()),
        metadata={"description": "[T][T]: change of p(class predicted at t) when input t' is occluded"},
    )
    horizon = fields.List(fields.Integer(), metadata={"description": "[T]: steps back holding 90 % of |memory|"})
    check = fields.Dict(metadata={"description": "max_abs_difference between numpy and onnxruntime, tolerance"})


class BinaryRequestSchema(StrictSchema):
    """A raw float32 body: `Seqserve-Shape: B,T,F` and optional `Seqserve-Lengths: l1,...,lB` headers, and the
    `outputs` query parameter."""

    shape = fields.String(
        required=True,
        validate=validate.Regexp(r"^\s*\d+\s*,\s*\d+\s*,\s*\d+\s*$", error="expected 'B,T,F' (three integers)"),
    )
    lengths = fields.String(
        validate=validate.Regexp(r"^\s*\d+(\s*,\s*\d+)*\s*$", error="expected comma-separated integers")
    )
    outputs = fields.String(
        validate=validate.Regexp(
            r"^(labels|probabilities|logits)(,(labels|probabilities|logits))*$",
            error=f"expected a comma-separated subset of {list(OUTPUTS)}",
        )
    )


class BatchingConfigSchema(StrictSchema):
    enabled = fields.Boolean()
    max_sequences = fields.Integer(strict=True, validate=validate.Range(min=1))
    max_cells = fields.Integer(strict=True, validate=validate.Range(min=1))
    max_queue_delay_ms = fields.Float(validate=validate.Range(min=0))
    max_run_ms = fields.Float(validate=validate.Range(min=0))
    max_queue = fields.Integer(strict=True, validate=validate.Range(min=1))


class ModelConfigSchema(StrictSchema):
    """`REPOSITORY/NAME/config.json`: per-model serving settings (like Triton's config.pbtxt), for every version."""

    batching = fields.Nested(BatchingConfigSchema, load_default=dict)


# ---------------------------------------------------------------------------------------------------- v2


class V2Parameters(fields.Dict):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), load_default=dict, **kwargs)


class InferInputSchema(StrictSchema):
    name = fields.String(required=True)
    shape = fields.List(fields.Integer(strict=True, validate=validate.Range(min=0)), required=True)
    datatype = fields.String(required=True, validate=validate.OneOf(V2_DATATYPES))
    parameters = V2Parameters()
    data = TensorDataField()

    @validates_schema
    def _data_or_binary(self, data: dict[str, Any], **kwargs: Any) -> None:
        binary = data.get("parameters", {}).get("binary_data_size")
        if binary is None and "data" not in data:
            raise ValidationError("give `data`, or `parameters.binary_data_size` with a binary body", "data")
        if binary is not None and (isinstance(binary, bool) or not isinstance(binary, int) or binary < 0):
            raise ValidationError("binary_data_size must be a non-negative integer", "parameters")


class InferOutputSchema(StrictSchema):
    name = fields.String(required=True)
    parameters = V2Parameters()


class InferRequestSchema(StrictSchema):
    id = id_field()
    parameters = V2Parameters()
    inputs = fields.List(fields.Nested(InferInputSchema), required=True, validate=validate.Length(min=1))
    outputs = fields.List(fields.Nested(InferOutputSchema))


# ------------------------------------------------------------------------------------------------ fast load


def quick_load(schema: Schema, data: Any, decoded: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The schema's own fields, without `Schema.load`'s per-call machinery (processors, error store, the unknown
    field pass), for a body that is all well-formed: a dict of known keys whose every field deserialises and
    validates. None for anything else, and then `schema.load` runs and writes the error. Only for schemas without
    hooks (processors, schema validators), whose `load` is exactly its fields' deserialisation. `decoded`: fields
    that a decoder of their own already turned into their loaded value (`SequencesField.from_numbers`)."""
    if any(schema._hooks.values()):
        raise ValueError(f"{type(schema).__name__} has hooks: quick_load would skip them")
    if type(data) is not dict or not data.keys() <= schema.load_fields.keys():
        return None
    loaded = dict(decoded or {})
    try:
        for name, field in schema.load_fields.items():
            if name in loaded:
                continue
            value = field.deserialize(data.get(name, missing), name, data)
            if value is not missing:
                loaded[name] = value
    except ValidationError:
        return None
    return loaded


_INFER_KEYS = frozenset(InferRequestSchema._declared_fields)
_INPUT_KEYS = frozenset(("name", "shape", "datatype", "parameters"))  # a binary input: no `data`
_OUTPUT_KEYS = frozenset(InferOutputSchema._declared_fields)


def quick_infer_header(data: Any) -> dict[str, Any] | None:
    """`InferRequestSchema().load` for the header that binary V2 clients send (tritonclient's, ours), by hand: every
    input binary (`parameters.binary_data_size`, no `data`), every value of the plain type its field takes. The
    schema's load cost 80 us a request, more than the rest of decoding a 64x50 binary tensor. None for anything
    else (JSON tensors, unknown keys, a bool where an int goes), and then the schema loads it and writes any error;
    tests check that what this accepts, the schema loads to the same value."""
    if type(data) is not dict or not data.keys() <= _INFER_KEYS:
        return None
    loaded: dict[str, Any] = {}
    if "id" in data:
        if type(data["id"]) is not str or len(data["id"]) > 128:
            return None
        loaded["id"] = data["id"]
    parameters = _quick_parameters(data.get("parameters", {}))
    inputs = data.get("inputs")
    if parameters is None or type(inputs) is not list or not inputs:
        return None
    loaded["parameters"] = parameters
    loaded["inputs"] = []
    for item in inputs:
        if type(item) is not dict or item.keys() != _INPUT_KEYS:
            return None
        name, shape, datatype, params = (
            item["name"],
            item["shape"],
            item["datatype"],
            _quick_parameters(item["parameters"]),
        )
        if type(name) is not str or type(shape) is not list or datatype not in V2_DATATYPES or params is None:
            return None
        if not all(type(d) is int and d >= 0 for d in shape):
            return None
        size = params.get("binary_data_size")
        if type(size) is not int or size < 0:
            return None
        loaded["inputs"].append({"name": name, "shape": list(shape), "datatype": datatype, "parameters": params})
    if "outputs" in data:
        if type(data["outputs"]) is not list:
            return None
        loaded["outputs"] = []
        for item in data["outputs"]:
            if type(item) is not dict or not item.keys() <= _OUTPUT_KEYS or type(item.get("name")) is not str:
                return None
            params = _quick_parameters(item.get("parameters", {}))
            if params is None:
                return None
            loaded["outputs"].append({"name": item["name"], "parameters": params})
    return loaded


def _quick_parameters(value: Any) -> dict[str, Any] | None:
    if type(value) is not dict or not all(type(k) is str for k in value):
        return None
    return dict(value)


# --------------------------------------------------------------------------------------- documentation
# What the endpoints answer, for the OpenAPI document (service/openapi.py) only: the fuzz tests check every response
# against these, so a field added to an answer must be added here. Strict (unknown = RAISE): no undocumented field.


class ErrorBodyDoc(StrictSchema):
    code = fields.String(required=True, metadata={"example": "invalid_input"})
    message = fields.String(required=True, metadata={"example": "sequences[3][17]: expected 6 features, got 5"})
    details = fields.Raw(required=True, allow_none=True, metadata={"description": "marshmallow's nested error dict"})
    request_id = fields.String(required=True, allow_none=True)


class ErrorDoc(StrictSchema):
    """Our API's error envelope (every path outside /v2)."""

    error = fields.Nested(ErrorBodyDoc, required=True)


class V2ErrorDoc(StrictSchema):
    """The Open Inference Protocol's error envelope (every path under /v2)."""

    error = fields.String(required=True)


class HealthDoc(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf(["alive"]))


class VersionStateDoc(StrictSchema):
    version = fields.Integer(required=True)
    state = fields.String(required=True, validate=validate.OneOf(["loading", "ready", "failed"]))
    reason = fields.String(required=True, allow_none=True, metadata={"description": "why it is not ready"})
    provider = fields.String(required=True, allow_none=True)


class WorkersDoc(StrictSchema):
    ready = fields.Integer(required=True)
    expected = fields.Integer(required=True)


class ReadyDoc(StrictSchema):
    ready = fields.Boolean(required=True)
    problems = fields.List(fields.String(), required=True)
    models = fields.Dict(keys=fields.String(), values=fields.List(fields.Nested(VersionStateDoc)), required=True)
    workers = fields.Nested(WorkersDoc)


class BatchingDoc(StrictSchema):
    enabled = fields.Boolean(required=True)
    max_sequences = fields.Integer(required=True)
    max_cells = fields.Integer(required=True)
    max_queue_delay_ms = fields.Float(required=True)
    max_run_ms = fields.Float(required=True)
    max_queue = fields.Integer(required=True)


class VersionDoc(VersionStateDoc):
    """A version as `/v1/models` describes it; the model's fields are there once it is ready."""

    classes = fields.List(fields.String())
    feature_names = fields.List(fields.String())
    input_dim = fields.Integer()
    head = fields.String(validate=validate.OneOf(["per_timestep", "last"]))
    cell = fields.String(validate=validate.OneOf(["rnn", "gru", "lstm"]))
    hidden_size = fields.Integer()
    layers = fields.Integer()
    bidirectional = fields.Boolean()
    metrics = fields.Dict()
    batching = fields.Nested(BatchingDoc)
    created = fields.String(allow_none=True)


class ModelDoc(StrictSchema):
    name = fields.String(required=True)
    versions = fields.List(fields.Nested(VersionDoc), required=True)


class ModelListDoc(StrictSchema):
    models = fields.List(fields.Nested(ModelDoc), required=True)


class PredictionDoc(StrictSchema):
    labels = fields.List(fields.String(), metadata={"description": "per timestep (per_timestep head)"})
    label = fields.String(metadata={"description": "one per sequence (last head)"})
    probabilities = fields.List(fields.Raw(), metadata={"description": "[T][C] (per_timestep head) or [C]"})
    logits = fields.List(fields.Raw())


class StreamRequestDoc(StrictSchema):
    """For the OpenAPI document only: `stream_schema` is built per model."""

    timesteps = fields.List(
        TimestepDoc(),
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "this request's new timesteps; a timestep may be an object keyed by name"},
    )
    state = fields.String(allow_none=True, metadata={"description": "the previous answer's token; null: a new stream"})
    outputs = outputs_field()
    id = id_field()


class StreamResponseDoc(StrictSchema):
    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    labels = fields.List(fields.String(), metadata={"description": "one per new timestep (per_timestep head)"})
    label = fields.String(metadata={"description": "the sequence so far, at its newest timestep (last head)"})
    probabilities = fields.List(fields.Raw(), metadata={"description": "[T][C] (per_timestep head) or [C]"})
    logits = fields.List(fields.Raw())
    state = fields.String(required=True, metadata={"description": "the token to send with the next timesteps"})
    steps = fields.Integer(required=True, metadata={"description": "timesteps the stream has seen"})
    id = fields.String()


class PredictResponseDoc(StrictSchema):
    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    id = fields.String()
    classes = fields.List(fields.String(), required=True)
    predictions = fields.List(fields.Nested(PredictionDoc), required=True)


class V2ServerDoc(StrictSchema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    extensions = fields.List(fields.String(), required=True)


class V2LiveDoc(StrictSchema):
    live = fields.Boolean(required=True)


class V2ReadyDoc(StrictSchema):
    ready = fields.Boolean(required=True)


class V2ModelReadyDoc(StrictSchema):
    name = fields.String(required=True)
    ready = fields.Boolean(required=True)


class V2TensorMetadataDoc(StrictSchema):
    name = fields.String(required=True)
    datatype = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True, metadata={"description": "-1: a dynamic axis"})


class V2ModelParametersDoc(StrictSchema):
    classes = fields.List(fields.String(), required=True)
    feature_names = fields.List(fields.String(), required=True)
    head = fields.String(required=True)
    provider = fields.String(required=True)
    optional_inputs = fields.List(fields.String(), required=True)


class V2ModelMetadataDoc(StrictSchema):
    name = fields.String(required=True)
    versions = fields.List(fields.String(), required=True)
    platform = fields.String(required=True)
    inputs = fields.List(fields.Nested(V2TensorMetadataDoc), required=True)
    outputs = fields.List(fields.Nested(V2TensorMetadataDoc), required=True)
    parameters = fields.Nested(V2ModelParametersDoc, required=True)


class TritonTensorDoc(StrictSchema):
    name = fields.String(required=True)
    data_type = fields.String(required=True)
    dims = fields.List(fields.Integer(), required=True)
    optional = fields.Boolean()


class TritonConfigDoc(StrictSchema):
    name = fields.String(required=True)
    platform = fields.String(required=True)
    backend = fields.String(required=True)
    max_batch_size = fields.Integer(required=True)
    input = fields.List(fields.Nested(TritonTensorDoc), required=True)
    output = fields.List(fields.Nested(TritonTensorDoc), required=True)
    version_policy = fields.Dict(required=True)


class V2OutputTensorDoc(StrictSchema):
    name = fields.String(required=True)
    datatype = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)
    parameters = fields.Dict(metadata={"description": "binary_data_size when the tensor follows the JSON header"})
    data = fields.List(fields.Raw(), metadata={"description": "row-major, flattened"})


class V2InferResponseDoc(StrictSchema):
    model_name = fields.String(required=True)
    model_version = fields.String(required=True)
    id = fields.String()
    parameters = fields.Dict(metadata={"description": "sequence requests: sequence_id, sequence_steps"})
    outputs = fields.List(fields.Nested(V2OutputTensorDoc), required=True)


# ------------------------------------------------------------------------------------------------ errors


def flatten_errors(messages: Any, root: str = "") -> list[str]:
    """marshmallow's nested error dict as `path: message` lines: `sequences[3][17]: expected 6 features, got 5`."""
    if isinstance(messages, str):
        return [f"{root or 'body'}: {messages}"]
    if isinstance(messages, list):
        return [line for m in messages for line in flatten_errors(m, root)]
    lines = []
    for key, sub in messages.items():
        if key == "_schema":
            path = root or "body"
        elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            path = f"{root}[{key}]"
        else:
            path = f"{root}.{key}" if root else str(key)
        lines.extend(flatten_errors(sub, path))
    return lines
