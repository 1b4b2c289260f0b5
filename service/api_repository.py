"""The model repository extension of the KServe V2 protocol, as Triton speaks it (`tritonclient.http`'s
`get_model_repository_index`, `load_model`, `unload_model` work unchanged):

- `POST /v2/repository/index` (body empty or `{"ready": true}`): every version in the repository, each as
  `{"name", "version", "state", "reason"}` with Triton's states READY, LOADING, UNAVAILABLE (failed, with the reason;
  or not loaded);
- `POST /v2/repository/models/NAME/load` (body empty or `{"parameters": {"config": "<JSON>"}}`): serve the model's
  versions that the config's `version_policy` selects (Triton's `all`, `latest {num_versions}`, `specific {versions}`;
  default `all`), loading any new or failed ones from the repository; the versions it no longer selects are unloaded
  once a selected one is ready, so `specific [2]` swaps 1 for 2 without a gap, and a refused 2 leaves 1 serving;
- `POST /v2/repository/models/NAME/unload` (`{"parameters": {"unload_dependents": false}}` accepted): the whole model,
  or, seqserve's extension, `{"parameters": {"versions": [1]}}` only those versions.

Success is 200 with an empty body, failure `{"error": "..."}` (400 a load refused, with each worker's reason).
The API is off unless `SEQSERVE_ADMIN_TOKEN` is set (403 saying so), then every call needs `Authorization: Bearer
<token>`, compared in constant time (401 otherwise).

How every gunicorn worker applies a change (service/control.py): the request writes the desired state with a new
generation number into the server's state folder; each worker's loader reads it every `SEQSERVE_CONTROL_INTERVAL`
seconds, applies it and acknowledges; the call answers once every worker did, or after `SEQSERVE_ADMIN_TIMEOUT` with
which workers had not (504; the change stays requested and they go on applying it). Several replicas each have
their own state folder: an operator calls every replica (docs/reliability.md).
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from flask import Blueprint, Response, request
from marshmallow import Schema, fields, validate

from modelrepo import layout
from service import codecs
from service.control import Ack, ControlFolder, Desired, Policy
from service.errors import BadRequest, NotFound, NotReady, ServiceError, Timeout
from service.http import codec_errors, dataplane, json_response, path_params, read_body, settings
from service.openapi import Reply, documented, json_reply

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")
codec_errors(bp, lambda exc: BadRequest)
TRITON_STATES = {"ready": "READY", "loading": "LOADING", "failed": "UNAVAILABLE"}


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="seqserve model repository"'})


class IndexRequest(Schema):
    ready = fields.Boolean(truthy={True}, falsy={False})


class LoadParameters(Schema):
    config = fields.String()


class LoadRequest(Schema):
    parameters = fields.Nested(LoadParameters)


class UnloadParameters(Schema):
    unload_dependents = fields.Boolean(truthy={True}, falsy={False})  # Triton's; seqserve has no ensembles to follow
    versions = fields.List(
        fields.Integer(strict=True, validate=validate.Range(min=1)), validate=validate.Length(min=1, max=1000)
    )


class UnloadRequest(Schema):
    parameters = fields.Nested(UnloadParameters)


ADMIN_ERRORS = (401, 403)  # the API is off (403) unless SEQSERVE_ADMIN_TOKEN is set; then a Bearer token (401)
EMPTY = Reply("done (empty body)", {"text/plain": {"type": "string", "maxLength": 0}})
INDEX = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
}


@bp.before_request
def authorize() -> None:
    if request.method == "OPTIONS":  # says which methods a route takes, changes nothing: as on every other route
        return
    token = settings().admin_token
    if not token:
        raise Forbidden("the model repository API is off: set SEQSERVE_ADMIN_TOKEN on the server to turn it on")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("the model repository API needs the header 'Authorization: Bearer <SEQSERVE_ADMIN_TOKEN>'")


@bp.post("/index")
@documented(
    "Triton's repository index: every model version in the repository, with its state and reason",
    {200: json_reply(INDEX, "the index")},
    errors=ADMIN_ERRORS,
    body={"application/json": IndexRequest},
)
def index() -> Response:
    ready_only = _body(IndexRequest()).get("ready", False)
    entries = repository_index(_control().read())
    return json_response([e for e in entries if e["state"] == "READY"] if ready_only else entries)


@bp.post("/models/<name>/load")
@documented(
    "Load a model (all versions, or those of a version_policy in parameters.config) in every worker",
    {200: EMPTY},
    errors=(*ADMIN_ERRORS, 504),
    body={"application/json": LoadRequest},
)
def load(name: str) -> Response:
    name, _ = path_params(name)
    parameters = _body(LoadRequest()).get("parameters", {})
    policy = parse_config(parameters["config"]) if "config" in parameters else Policy("all")
    available = _on_disk(name)
    if not available:
        raise BadRequest(f"failed to load {name!r}: the model repository holds no version of it")
    if missing := sorted(set(policy.versions) - set(available)):
        raise BadRequest(
            f"failed to load {name!r}: versions {missing} are not in the repository (it holds {available})"
        )
    generation = _control().update(lambda d: d.with_policy(name, policy)).generation
    acks = _wait(generation)
    if problems := load_problems(name, sorted(policy.select(available)), acks):
        raise BadRequest(f"failed to load {name!r}: {'; '.join(problems)}")
    return Response(b"", status=200, mimetype="text/plain")


@bp.post("/models/<name>/unload")
@documented(
    "Unload a model (or some of its versions: parameters.versions) in every worker; requests in flight finish",
    {200: EMPTY},
    errors=(*ADMIN_ERRORS, 404, 504),
    body={"application/json": UnloadRequest},
)
def unload(name: str) -> Response:
    name, _ = path_params(name)
    versions = _body(UnloadRequest()).get("parameters", {}).get("versions")
    available = _on_disk(name)
    if not available and name not in dataplane().names():
        raise NotFound(f"model {name!r} is neither in the repository nor loaded")

    def change(desired: Desired) -> Desired:
        if versions is None:
            return desired.with_policy(name, Policy("none"))
        kept = desired.policy(name).select(available) - set(versions)
        return desired.with_policy(name, Policy("specific", tuple(sorted(kept))) if kept else Policy("none"))

    _wait(_control().update(change).generation)
    return Response(b"", status=200, mimetype="text/plain")


def parse_config(text: str) -> Policy:
    """Triton's model configuration, as JSON; only its `version_policy` can be chosen at load time."""
    try:
        config = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"parameters.config: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise BadRequest("parameters.config: expected a JSON object")
    if others := sorted(set(config) - {"name", "version_policy"}):
        raise BadRequest(f"parameters.config: only version_policy can be set at load time, not {others}")
    policy = config.get("version_policy", {"all": {}})
    if not isinstance(policy, dict) or len(policy) != 1:
        raise BadRequest("parameters.config.version_policy: expected one of all, latest, specific")
    ((kind, spec),) = policy.items()
    if kind == "all":
        return Policy("all")
    if kind == "latest" and isinstance(spec, dict) and _count(spec.get("num_versions")) is not None:
        return Policy("latest", latest=_count(spec["num_versions"]) or 1)
    if kind == "specific" and isinstance(spec, dict) and isinstance(spec.get("versions"), list) and spec["versions"]:
        numbers = [_count(v) for v in spec["versions"]]
        if None not in numbers:
            return Policy("specific", tuple(sorted({n for n in numbers if n is not None})))
    raise BadRequest(
        "parameters.config.version_policy: expected {'all': {}}, {'latest': {'num_versions': N}} or "
        "{'specific': {'versions': [N, ...]}} with positive integers"
    )


def repository_index(desired: Desired) -> list[dict[str, str]]:
    """Every version on disk or loaded in this worker, with Triton's state names, sorted by name and version."""
    states = dataplane().version_states()
    on_disk: dict[str, list[int]] = {}
    for entry in layout.scan(dataplane().root):
        on_disk.setdefault(entry.name, []).append(entry.version)
    entries = []
    for name in sorted(on_disk.keys() | states.keys()):
        selected = desired.policy(name).select(on_disk.get(name, []))
        known = {int(v): s for v, s in states.get(name, {}).items()}
        for number in sorted(set(on_disk.get(name, [])) | known.keys()):
            if number in known:
                state, reason = TRITON_STATES[known[number]["state"]], known[number]["reason"]
            elif number in selected:
                state, reason = "UNAVAILABLE", "in the repository, not loaded yet: POST .../load loads it"
            else:
                state, reason = "UNAVAILABLE", "unloaded"
            entry = {"name": name, "version": str(number), "state": state}
            entries.append({**entry, "reason": reason} if reason else entry)
    return entries


def load_problems(name: str, selected: list[int], acks: list[Ack]) -> list[str]:
    """What each worker could not load, and what it serves instead."""
    problems = []
    for ack in acks:
        versions = ack.models.get(name, {})
        for number in selected:
            state = versions.get(str(number), {"state": "absent", "reason": "not in the repository any more"})
            if state["state"] != "ready":
                problems.append(f"version {number} in worker {ack.pid}: {state['reason'] or state['state']}")
        serving = [int(v) for v, s in versions.items() if s["state"] == "ready" and int(v) not in selected]
        if problems and serving:
            problems.append(f"worker {ack.pid} keeps serving versions {sorted(serving)}")
    return problems


def _wait(generation: int) -> list[Ack]:
    s = settings()
    done, acks = _control().wait(generation, s.worker_count, s.admin_timeout)
    applied = [a for a in acks if a.generation >= generation]
    if not done:
        pending = [a.pid for a in acks if a.generation < generation]
        raise Timeout(
            f"change {generation} applied by {len(applied)} of {s.worker_count} workers within {s.admin_timeout:g} s "
            f"(behind: workers {pending}, and {max(0, s.worker_count - len(acks))} not reporting); it stays requested "
            "and they go on applying it: POST /v2/repository/index shows the state"
        )
    return applied


def _control() -> ControlFolder:
    control = dataplane().control
    if control is None:
        raise NotReady("the model repository API needs the server's state folder (gunicorn.conf.py sets it up)")
    return control


def _on_disk(name: str) -> list[int]:
    return sorted(e.version for e in layout.scan(dataplane().root) if e.name == name)


def _body(schema: Schema) -> dict[str, Any]:
    raw = read_body()
    if not raw.strip():
        return {}
    data = codecs.decode_json(raw)
    parameters = data.get("parameters") if isinstance(data, dict) else None
    if isinstance(parameters, dict) and (files := [k for k in parameters if str(k).startswith("file:")]):
        raise BadRequest(f"parameters {files}: file overrides are not supported; publish a version instead")
    return codecs.load(schema, data)


def _count(value: Any) -> int | None:
    """A positive integer, given as a number or, as protobuf's JSON writes int64, a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    return None
