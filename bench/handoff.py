"""What handing a call to a real thread costs a gevent worker: CPU per call of gevent's `ThreadPool.apply` and of
seqserve's `NativePool.apply` (service/concurrency.py), for one greenlet calling at a time and for several at once.

    python -m bench.handoff [--calls 5000] [--greenlets 8]

The call does nothing, so what is measured is the hand-off: this process's CPU time (every thread's) per call.
It runs under gevent's monkey patching, as the gevent worker does, and so in its own process.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after patching, as in a gevent worker
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--greenlets", type=int, default=8)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
