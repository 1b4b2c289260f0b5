"""The inference lane: requests to the inference endpoints go from the WSGI environ straight to the endpoints' cores.

Flask's per-request machinery (request and app contexts, URL matching, the before/after hooks, the `Response`
object and werkzeug's context proxies) costs about 400 us of CPU per request on this project's development
machine: more than onnxruntime's whole run of a 50-step LSTM, and most of what a small request costs beyond a bare
endpoint (docs/benchmarks.md). So `create_app` puts this lane in front of Flask. It takes the requests that the
inference endpoints get in the common form, and sends everything else on to Flask unchanged.

It takes a request only when all of these hold:
- it is a POST to one of `ROUTES`;
- it has a `Content-Length` within `SEQSERVE_MAX_BODY_BYTES`;
- it has no `Content-Encoding` (or identity), no `Transfer-Encoding` and no query string.

Flask answers the rest: gzip and chunked bodies, `?outputs=`, 405 and 413, every other path.

Both doors answer a request the same way, because they share what decides the answer:
- the endpoints' cores: `predict_reply`, `stream_reply` and `infer_reply`, which read a `Call`;
- the error bodies: `error_reply`, with each API's status for a `CodecError`;
- the request id and what a request leaves behind (`RequestRecorder`: metrics and the access line).

tests/service/test_lane.py sends the same requests through both doors and compares status, headers and body.
`SEQSERVE_FAST_PATH=false` sends every request through Flask.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES

from service import api_v1, api_v2
from service.codecs import CodecError
from service.errors import BadRequest, ServiceError
from service.http import Call, error_reply
from service.observability import REQUEST_ID, RequestRecorder, request_id

if TYPE_CHECKING:
    from service.app import Resources

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Reply = tuple[bytes, dict[str, str]]
_JSON = {"Content-Type": "application/json"}
_PATH = re.compile(r"/(v1|v2)/models/([^/]+)(?:/versions/([^/]+))?/(predict|stream|infer)")


@dataclass(frozen=True)
class Route:
    """One inference endpoint: its Flask rules without and with a version (they label its metrics), its core, and
    the status its API gives a `CodecError`."""

    rules: tuple[str, str]
    core: Callable[[Resources, Call, str, str | None], Reply]
    codec_status: Callable[[CodecError], type[ServiceError]]


def _json(core: Callable[[Resources, Call, str, str | None], bytes]) -> Callable[..., Reply]:
    return lambda res, call, name, version: (core(res, call, name, version), _JSON)


def _rules(api: str, action: str) -> tuple[str, str]:
    return f"/{api}/models/<name>/{action}", f"/{api}/models/<name>/versions/<version>/{action}"


ROUTES = {
    ("v1", "predict"): Route(_rules("v1", "predict"), _json(api_v1.predict_reply), api_v1.v1_status),
    ("v1", "stream"): Route(_rules("v1", "stream"), _json(api_v1.stream_reply), api_v1.v1_status),
    ("v2", "infer"): Route(_rules("v2", "infer"), api_v2.infer_reply, api_v2.v2_status),
}


def _no_argument(name: str) -> None:
    return None  # the lane takes no request with a query string


@dataclass(frozen=True, slots=True)
class Taken:
    """A request the lane answers: its route, path parameters and body length."""

    route: Route
    name: str
    version: str | None
    length: int


Header = Callable[[str], str | None]  # a request header by name ("Content-Type"), None when absent
Answer = tuple[int, list[tuple[str, str]], bytes]  # status, headers (Content-Length and X-Request-ID included), body


class InferenceLane:
    """WSGI middleware in front of the Flask app (`app.wsgi_app`). `take` and `answer` are what it does without
    WSGI: `service/worker.py` calls them straight from the bytes on the connection."""

    def __init__(self, flask: WSGIApp, res: Resources, recorder: RequestRecorder) -> None:
        self.flask, self.res, self.recorder = flask, res, recorder
        self.max_body = res.settings.max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = _environ_header(environ)
        taken = self.take(
            environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), header
        )
        if taken is None:
            return self.flask(environ, start_response)
        body = environ["wsgi.input"].read(taken.length)
        status, headers, answer = self.answer(taken, environ["PATH_INFO"], body, header)
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", headers)
        return [answer]

    def take(self, method: str, path: str, query: str, header: Header) -> Taken | None:
        """The route, path parameters and body length of a request the lane answers; None: Flask's."""
        if method != "POST" or query:
            return None
        if header("Transfer-Encoding") is not None:
            return None
        encoding = header("Content-Encoding")
        if encoding is not None and encoding.strip().lower() != "identity":
            return None
        length = header("Content-Length") or ""
        if not (length.isascii() and length.isdigit()) or int(length) > self.max_body:
            return None
        match = _PATH.fullmatch(path)
        if match is None or (route := ROUTES.get((match[1], match[4]))) is None:
            return None
        return Taken(route, match[2], match[3], int(length))

    def answer(self, taken: Taken, path: str, body: bytes, header: Header) -> Answer:
        """Run the endpoint's core on the request and record it (metrics, access line)."""
        started = time.perf_counter()
        rid = request_id(header(REQUEST_ID))
        route = taken.route
        call = Call(body, _mimetype(header("Content-Type")), header, _no_argument, rid)
        status = 200
        try:
            if len(body) < taken.length:
                raise BadRequest(f"the body ended after {len(body)} of its {taken.length} bytes (Content-Length)")
            answer, headers = route.core(self.res, call, taken.name, taken.version)
        except CodecError as exc:
            status, headers, answer = error_reply(route.codec_status(exc)(exc.message, exc.details), "POST", path, rid)
            headers = {**headers, **_JSON}
        except Exception as exc:  # ServiceError, or an unexpected failure: logged there, 500
            status, headers, answer = error_reply(exc, "POST", path, rid)
            headers = {**headers, **_JSON}
        elapsed = time.perf_counter() - started
        self.recorder.record("POST", path, route.rules[taken.version is not None], call.model, status, elapsed, rid)
        return status, [*headers.items(), ("Content-Length", str(len(answer))), (REQUEST_ID, rid)], answer


_CGI_NAMED = {"Content-Type": "CONTENT_TYPE", "Content-Length": "CONTENT_LENGTH"}  # WSGI keeps these unprefixed


def _environ_header(environ: dict[str, Any]) -> Header:
    return lambda name: environ.get(_CGI_NAMED.get(name) or _environ_key(name))


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _mimetype(content_type: str | None) -> str:
    """As werkzeug's `Request.mimetype`: the Content-Type without parameters, lower case."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def lane_of(app: Any) -> InferenceLane | None:
    """The lane in front of an app made by `create_app` (None when SEQSERVE_FAST_PATH is off, or for another app)."""
    lane = getattr(app, "wsgi_app", None)
    return lane if isinstance(lane, InferenceLane) else None
