"""What a 64 x 50 V2 binary request costs beside the model's run, in-process: where issue 9's "V2 binary vs raw
onnxruntime" budget goes once the sockets are left out.

One request body goes through the real app's inference lane (`InferenceLane.answer`: decoding, checks, batcher,
metrics, the answer), four ways, each timed in CPU seconds of this thread (`time.thread_time`):
- `model`: the model version's onnxruntime session alone, `run` on the request's inputs, back to back;
- `whole`: the lane's answer with that session, back to back;
- `hot`: the lane's answer with the session's `run` standing in by the outputs of one real run, back to back: the
  request's own code with the processor's caches holding it;
- `cold`: the same, each answer right after a real run of the session (not timed): the request's own code as a
  server runs it, after the model has filled the caches with its own data.

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


@dataclass(frozen=True)
class LaneCost:
    model: str
    model_us: float  # the session's run alone
    whole_us: float  # the lane's answer with the real session
    hot_us: float  # the lane's answer beside a stand-in run, caches warm
    cold_us: float  # the same, each right after a real run

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


def measure(repository: Path, model: str, seconds: float) -> LaneCost:
    from service import create_app
    from service.app import close_app, resources
    from service.lane import lane_of

    app = create_app({"model_repository": str(repository), "log_requests": "false", "log_level": "WARNING"})
    try:
        plane = resources(app).plane
        wait_ready(plane)
        lane = lane_of(app)
        if lane is None:
            raise RuntimeError("the app has no inference lane (SEQSERVE_FAST_PATH is off)")
        runtime = plane.get(model).runtime
        features = np.random.default_rng(0).normal(size=(SEQUENCES, STEPS, runtime.manifest.input_dim))
        body, header_lines = payloads.v2_binary(features.astype(np.float32))
        headers = dict(h.split(": ", 1) for h in header_lines) | {"Content-Length": str(len(body))}
        path = f"/v2/models/{model}/infer"
        taken = lane.take("POST", path, "", headers.get)
        assert taken is not None, "the lane should take a plain V2 binary request"

        def answer() -> None:
            status, _, reply = lane.answer(taken, path, body, headers.get)
            assert status == 200, reply[:300]

        real = runtime.session
        feeds = {"features": features.astype(np.float32), "lengths": np.full(SEQUENCES, STEPS, dtype=np.int64)}
        outputs = runtime.run(feeds)
        model_us = _cpu_us(lambda: real.run(runtime.output_names, feeds), seconds)
        whole_us = _cpu_us(answer, seconds)
        runtime.session = _StandIn([outputs[name] for name in runtime.output_names])
        try:
            hot_us = _cpu_us(answer, seconds)
            cold_us = _cpu_us(answer, seconds, before=lambda: real.run(runtime.output_names, feeds))
        finally:
            runtime.session = real
        return LaneCost(model, model_us, whole_us, hot_us, cold_us)
    finally:
        close_app(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("bench/results/model_repository"))
    parser.add_argument("--model", default="h32")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    cost = measure(args.repository, args.model, args.seconds)
    print(
        f"{cost.model} {SEQUENCES}x{STEPS} V2 binary, in-process, CPU us per request: "
        f"model's run {cost.model_us:,.0f}; whole answer {cost.whole_us:,.0f} "
        f"({cost.beside_us:,.0f} beside the run); the request's own code {cost.hot_us:,.0f} with warm caches, "
        f"{cost.cold_us:,.0f} right after a model run"
    )


if __name__ == "__main__":
    main()
