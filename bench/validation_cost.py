"""Issue 4's validation budget, measured in-process: what parsing and validating the 64 x 50 JSON payload costs
next to the whole request. The whole request goes through Flask's test client into the real app (codecs,
schema, dataplane, batcher, onnxruntime, response encoding), without sockets; the parts are the service's own
functions on the same bytes, those the request runs: for a body the numbers path takes, `codecs.parse_v1`
(simdjson) and `codecs.load_v1` (the shape checks, the float32 batch, the marshmallow fields of the rest);
otherwise `codecs.decode_json` (orjson) and the model's schema through `quick_load`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUDGET = 0.10


@dataclass(frozen=True)
class ValidationCost:
    model: str
    payload: str
    request_ms: float  # the whole request, in-process
    parse_ms: float  # JSON bytes -> a parsed document
    validate_ms: float  # the document -> the checked float32 batch
    parser: str = "orjson, `codecs.decode_json`"
    validator: str = "the v1 codec's marshmallow fields, `quick_load`, incl. the float32 conversion"

    @property
    def share(self) -> float:
        return self.validate_ms / self.request_ms

    @property
    def passed(self) -> bool:
        return self.share <= BUDGET


def _median_ms(call: Callable[[], object], seconds: float, least: int = 20) -> float:
    call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < least or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if len(times) >= 10_000:
            break
    return statistics.median(times) * 1e3


def wait_ready(plane: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not plane.readiness()[0]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"models not ready after {timeout:.0f} s: {plane.readiness()[1]}")
        time.sleep(0.1)


def measure(repository: Path, model: str, payload: str, body: bytes, seconds: float) -> ValidationCost:
    import simdjson

    from service import codecs, create_app
    from service.app import close_app, resources
    from service.schemas import predict_schema, quick_load

    app = create_app({"model_repository": str(repository), "log_requests": "false", "log_level": "WARNING"})
    plane, settings = resources(app).plane, resources(app).settings
    wait_ready(plane)
    manifest = plane.get(model).manifest
    schema = predict_schema(manifest.feature_names, settings.max_sequences, settings.max_timesteps)
    client = app.test_client()
    url = f"/v1/models/{model}/predict"

    def whole() -> None:
        response = client.post(url, data=body, content_type="application/json")
        assert response.status_code == 200, response.get_data(as_text=True)[:200]

    doc = codecs.parse_v1(body)
    if doc is not None and codecs.load_v1(doc, body, schema) is not None:  # the path the request takes
        paths = {
            "parser": "simdjson, `codecs.parse_v1`",
            "validator": "the shape checks, the float32 batch and the marshmallow fields of the rest, `codecs.load_v1`",
        }
        parser = simdjson.Parser()  # reused from call to call, as requests reuse theirs (`codecs._IDLE_PARSERS`)
        parse, validate = (lambda: codecs.parse_v1(body, parser)), (lambda: codecs.load_v1(doc, body, schema))
    else:
        parsed, paths = codecs.decode_json(body), {}
        parse = lambda: codecs.decode_json(body)  # noqa: E731
        validate = lambda: quick_load(schema, parsed) or schema.load(parsed)  # noqa: E731
    try:
        return ValidationCost(
            model=model,
            payload=payload,
            request_ms=_median_ms(whole, seconds),
            parse_ms=_median_ms(parse, seconds),
            validate_ms=_median_ms(validate, seconds),
            **paths,
        )
    finally:
        close_app(app)


def unavailable() -> str | None:
    """Why the micro-benchmark cannot run in this tree, or None."""
    try:
        from service import codecs, create_app  # noqa: F401
    except ImportError as exc:
        return f"the service cannot be imported ({exc})"
    if not hasattr(codecs, "decode_json"):
        return "service.codecs has no decode_json"
    return None
