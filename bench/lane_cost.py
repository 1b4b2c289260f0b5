"""What a 64 x 50 binary request costs beside the model's run, in-process: where issue 9's "V2 binary" and "v1 raw
float32" budgets against raw onnxruntime go once the sockets are left out.

One request body per format (V2 binary tensors; v1 raw float32, answered in JSON) goes through the real app's
inference lane (`InferenceLane.answer`: decoding, checks, batcher, metrics, the answer), timed in CPU seconds of
this thread (`time.thread_time`):
- `model`: the model version's onnxruntime session alone, `run` on the request's inputs, back to back;
- `whole`: the lane's answer with that session, back to back;
- `hot`: the lane's answer with the session's `run` standing in by the outputs of one real run, back to back: the
  request's own code with the processor's caches holding it;
- `cold`: the same, each answer right after a real run of the session (not timed): the request's own code as a
  server runs it, after the model has filled the caches with its own data;
- `encode`: the answer's encoding alone (`codecs.v2_response`, `codecs.v1_response`), back to back.

The gap between `hot` and `cold` is the price of alternating a model run with Python on one core; a server pays
the cold price on every request (docs/benchmarks.md, "Beside the model").

    python -m bench.lane_cost [--repository bench/results/model_repository] [--model h32] [--seconds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import payloads
from bench.validation_cost import wait_ready

SEQUENCES, STEPS = 64, 50


FORMATS = ("v2-binary", "v1-binary")
_PATHS = {"v2-binary": "/v2/models/{}/infer", "v1-binary": "/v1/models/{}/predict"}
_NAMES = {"v2-binary": "V2 binary", "v1-binary": "v1 raw float32"}


@dataclass(frozen=True)
class LaneCost:
    model: str
    format: str  # a key of FORMATS
    model_us: float  # the session's run alone
    whole_us: float  # the lane's answer with the real session
    hot_us: float  # the lane's answer beside a stand-in run, caches warm
    cold_us: float  # the same, each right after a real run
    encode_us: float  # the answer's encoding alone, caches warm

    @property
    def name(self) -> str:
        return _NAMES[self.format]

    @property
    def beside_us(self) -> float:
        """What the whole answer costs beyond the model's run."""
        return self.whole_us - self.model_us


class _StandIn:
    """A session whose `run` returns the outputs of one real run: the lane's own code, timed without the model."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.outputs = outputs

    def run(self, names: list[str], feeds: dict[str, np.ndarray], *args: Any) -> list[np.ndarray]:
        return self.outputs


def _cpu_us(call: Callable[[], object], seconds: float, before: Callable[[], object] | None = None) -> float:
    """Median CPU microseconds of `call` over rounds of about 0.1 s; `before` runs ahead of each call, untimed."""
    call()
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(rounds) < 5 or time.perf_counter() < deadline:
        spent, count, until = 0.0, 0, time.perf_counter() + 0.1
        while count < 3 or time.perf_counter() < until:
            if before is not None:
                before()
            started = time.thread_time()
            call()
            spent += time.thread_time() - started
            count += 1
        rounds.append(spent / count * 1e6)
    return float(np.median(rounds))


def measure(repository: Path, model: str, seconds: float, formats: tuple[str, ...] = FORMATS) -> list[LaneCost]:
    from service import create_app
    from service.app import close_app, resources
    from service.lane import lane_of

    app = create_app({"model_repository": str(repository), "log_requests": "false", "log_level": "WARNING"})
    try:
        res = resources(app)
        wait_ready(res.plane)
        lane = lane_of(app)
        if lane is None:
            raise RuntimeError("the app has no inference lane (SEQSERVE_FAST_PATH is off)")
        loaded = res.plane.get(model)
        runtime = loaded.runtime
        features = np.random.default_rng(0).normal(size=(SEQUENCES, STEPS, runtime.manifest.input_dim))
        features = features.astype(np.float32)
        feeds = {"features": features, "lengths": np.full(SEQUENCES, STEPS, dtype=np.int64)}
        real, outputs = runtime.session, runtime.run(feeds)
        model_us = _cpu_us(lambda: real.run(runtime.output_names, feeds), seconds)
        costs = []
        for fmt in formats:
            body, header_lines = payloads.ENCODERS[fmt](features)
            headers = dict(h.split(": ", 1) for h in header_lines) | {"Content-Length": str(len(body))}
            path = _PATHS[fmt].format(model)
            taken = lane.take("POST", path, "", headers.get)
            assert taken is not None, f"the lane should take a plain {fmt} request"

            def answer(taken: Any = taken, path: str = path, body: bytes = body, headers: dict = headers) -> None:
                status, _, reply = lane.answer(taken, path, body, headers.get)
                assert status == 200, reply[:300]

            whole_us = _cpu_us(answer, seconds)
            runtime.session = _StandIn([outputs[name] for name in runtime.output_names])
            try:
                hot_us = _cpu_us(answer, seconds)
                cold_us = _cpu_us(answer, seconds, before=lambda: real.run(runtime.output_names, feeds))
            finally:
                runtime.session = real
            encode = _encoder(fmt, res, loaded, body, headers, outputs)
            costs.append(LaneCost(model, fmt, model_us, whole_us, hot_us, cold_us, _cpu_us(encode, seconds)))
        return costs
    finally:
        close_app(app)


def _encoder(
    fmt: str, res: Any, loaded: Any, body: bytes, headers: dict[str, str], outputs: dict[str, np.ndarray]
) -> Callable[[], object]:
    """The answer's encoding of this request, as the endpoint calls it, on the outputs of one real run."""
    from service import api_v1, codecs
    from service.http import Call

    manifest = loaded.manifest
    if fmt == "v2-binary":
        request = codecs.v2_request(body, headers["Inference-Header-Content-Length"], manifest, res.limits)
        return lambda: codecs.v2_response(manifest, request, outputs)
    call = Call(body, headers["Content-Type"], headers.get, lambda name: None, None)
    predict = api_v1.parse_predict(call, loaded, res.limits)
    return lambda: codecs.v1_response(manifest, predict, outputs, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("bench/results/model_repository"))
    parser.add_argument("--model", default="h32")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    for cost in measure(args.repository, args.model, args.seconds):
        print(
            f"{cost.model} {SEQUENCES}x{STEPS} {cost.name}, in-process, CPU us per request: "
            f"model's run {cost.model_us:,.0f}; whole answer {cost.whole_us:,.0f} "
            f"({cost.beside_us:,.0f} beside the run); the request's own code {cost.hot_us:,.0f} with warm caches, "
            f"{cost.cold_us:,.0f} right after a model run; the answer's encoding {cost.encode_us:,.0f}"
        )


if __name__ == "__main__":
    main()
