"""What handing a call to a real thread costs a gevent worker: CPU per call of gevent's `ThreadPool.apply` and of
seqserve's `NativePool.apply` (service/concurrency.py), for one greenlet calling at a time and for several at once.

    python -m bench.handoff [--calls 5000] [--greenlets 8] [--model bench/results/model_repository/h32/1/model.onnx]

The call does nothing, so what is measured is the hand-off: this process's CPU time (every thread's) per call.
It runs under gevent's monkey patching, as the gevent worker does, and so in its own process.

With `--model`, it also runs that ONNX model on a 64x50 batch through a `NativePool` that has started 1, 2 and 4
threads, one call at a time, as a worker does after it once ran two models at once: CPU per call, and how many
threads served the calls (the pool hands each call to the thread that went idle last, so one should).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after patching, as in a gevent worker
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402

from service.concurrency import NativePool  # noqa: E402

Apply = Callable[..., object]


def _nothing() -> int:
    return 1


def cpu_per_call(apply: Apply, calls: int, greenlets: int) -> float:
    """Microseconds of CPU per call, with `greenlets` greenlets calling `calls` times in all."""

    def caller() -> None:
        for _ in range(calls // greenlets):
            apply(_nothing)

    gevent.joinall([gevent.spawn(caller) for _ in range(greenlets)], raise_error=True)  # warm: threads started
    started = time.process_time()
    gevent.joinall([gevent.spawn(caller) for _ in range(greenlets)], raise_error=True)
    return (time.process_time() - started) / (calls // greenlets * greenlets) * 1e6


def model_calls(model: str, calls: int) -> None:
    """A 64x50 run of `model`, one call at a time, through pools that have started 1, 2 and 4 threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def batch(spec: ort.NodeArg) -> np.ndarray:
        """64 sequences of 50 timesteps; a state input (h0, c0) at zero."""
        if spec.name == "lengths":
            return np.full(64, 50, dtype=np.int64)
        shape = [dim if isinstance(dim, int) else 64 for dim in spec.shape]  # the named axes: batch, time
        if spec.name != "features":
            return np.zeros(shape, dtype=np.float32)
        shape[1] = 50
        return rng.standard_normal(shape).astype(np.float32)

    feeds = {spec.name: batch(spec) for spec in session.get_inputs()}
    native_id, real_sleep = monkey.get_original("threading", "get_native_id"), monkey.get_original("time", "sleep")

    def run() -> int:
        session.run(None, feeds)
        return native_id()

    for threads in (1, 2, 4):
        pool = NativePool(gevent.get_hub())
        gevent.joinall([gevent.spawn(pool.apply, real_sleep, 0.05) for _ in range(threads)])  # starts `threads`
        for _ in range(20):
            pool.apply(run)
        started, served = time.process_time(), {pool.apply(run) for _ in range(calls)}
        cpu = (time.process_time() - started) / calls * 1e6
        print(f"64x50 run, pool of {threads} thread(s): {cpu:7.1f} us CPU per call, served by {len(served)} thread(s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--greenlets", type=int, default=8)
    p.add_argument("--model", help="an ONNX sequence model (features, lengths): also time its 64x50 run")
    p.add_argument("--model-calls", type=int, default=1000)
    a = p.parse_args(argv)
    hub = gevent.get_hub()
    pools: dict[str, Apply] = {
        "gevent ThreadPool": lambda fn: hub.threadpool.apply(fn),
        "seqserve NativePool": NativePool.of_this_hub().apply,
    }
    for name, apply in pools.items():
        alone = cpu_per_call(apply, a.calls, 1)
        many = cpu_per_call(apply, a.calls, a.greenlets)
        print(f"{name:>20}: {alone:6.1f} us CPU per call alone, {many:6.1f} us with {a.greenlets} greenlets calling")
    if a.model:
        model_calls(a.model, a.model_calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
