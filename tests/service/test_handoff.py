"""service/concurrency.py `NativePool`: how a gevent worker hands onnxruntime calls to real threads. Checked under
gevent's monkey patching in a subprocess (patching this pytest process would change every other test), with real
blocking native calls (`time.sleep` in C, onnxruntime's session) on real OS threads."""

from __future__ import annotations

import textwrap

from tests.service.conftest import run_gevent_script

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import os
    import sys
    import time
    from pathlib import Path

    import gevent
    import numpy as np

    from modelrepo import layout
    from service.concurrency import NativePool, offload
    from service.runtime import ModelRuntime

    native_id = monkey.get_original("threading", "get_native_id")
    real_sleep = monkey.get_original("time", "sleep")
    main = native_id()
    report = {}

    # A call runs on another OS thread and its value comes back; the hub keeps serving greenlets meanwhile.
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
    report["value"] = offload(lambda x: (x * 2, native_id() != main), 21)
    offload(real_sleep, 0.2)
    report["ticks_during_call"] = len(ticks)
    ticker.join()

    # Its exception is raised in the caller, with the thread's traceback.
    def fails():
        raise KeyError("missing")

    try:
        offload(fails)
    except KeyError as exc:
        report["error"] = [str(exc), exc.__traceback__ is not None]

    # More calls at once than threads: they wait for one, and every value reaches its own caller.
    pool = NativePool(gevent.get_hub(), max_threads=2)
    threads_seen = set()

    def slow(i):
        threads_seen.add(native_id())
        real_sleep(0.05)
        return i

    started = time.perf_counter()
    calls = [gevent.spawn(pool.apply, slow, i) for i in range(6)]
    gevent.joinall(calls, raise_error=True)
    report["queued"] = {
        "values": [g.value for g in calls],
        "threads": len(threads_seen),
        "started": pool.threads,
        "seconds": time.perf_counter() - started,
        "busy_after": pool.busy,
    }

    # One call at a time goes to one thread, however many the pool has started: the one that went idle last.
    lifo = NativePool(gevent.get_hub(), max_threads=4)
    gevent.joinall([gevent.spawn(lifo.apply, real_sleep, 0.05) for _ in range(4)], raise_error=True)
    served = [lifo.apply(native_id) for _ in range(20)]
    # Calls that arrive together still run together, each on its own thread.
    started = time.perf_counter()
    together = gevent.joinall([gevent.spawn(lifo.apply, slow, i) for i in range(4)], raise_error=True)
    report["idle_order"] = {
        "started": lifo.threads,
        "served_by": len(set(served)),
        "together_values": sorted(g.value for g in together),
        "together_seconds": time.perf_counter() - started,
    }

    # A caller that times out leaves; its call finishes on its thread and the pool goes on serving.
    try:
        with gevent.Timeout(0.05):
            pool.apply(real_sleep, 0.3)
        report["timeout"] = "no timeout"
    except gevent.Timeout:
        report["timeout"] = [pool.busy, pool.apply(lambda: "still serving")]

    # The same pool for every call on this hub, in this process.
    report["one_pool"] = NativePool.of_this_hub() is NativePool.of_this_hub()

    # A forked child (a worker forked from a process that made a pool) makes its own: the threads that served the
    # parent's pool did not come along, so a call handed to it would wait forever.
    parent_pool = NativePool.of_this_hub()
    parent_pool.apply(lambda: None)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            with gevent.Timeout(5):
                own = NativePool.of_this_hub()
                answer = [own is not parent_pool, own.apply(lambda: 7)]
        except gevent.Timeout:
            answer = "the call never came back"
        os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.waitpid(child, 0)
    report["forked"] = json.loads(os.read(read_end, 1000))

    # onnxruntime through the pool: the same answer as a plain call.
    repository = Path(sys.argv[1])
    entry = layout.VersionDir("lstm_step", 1, repository / "lstm_step" / "1")
    runtime = ModelRuntime(entry.path, layout.read_version(entry), "cpu", 1)
    features = np.random.default_rng(0).standard_normal((4, 30, runtime.manifest.input_dim)).astype(np.float32)
    inputs = {"features": features, "lengths": np.array([30, 10, 1, 29])}
    pooled = gevent.joinall([gevent.spawn(runtime.run, inputs) for _ in range(4)], raise_error=True)
    plain = runtime.session.run(runtime.output_names, inputs)[0]
    report["onnx_max_diff"] = max(float(np.abs(g.value["probabilities"] - plain).max()) for g in pooled)
    print(json.dumps(report))
    """
)


def test_native_pool_under_gevent(model_repository):
    got = run_gevent_script(SCRIPT, str(model_repository))
    assert got["value"] == [42, True], "the call should run on another OS thread and return its value"
    assert got["ticks_during_call"] >= 5, "other greenlets should run while a call blocks its thread"
    assert got["error"] == ["'missing'", True]
    queued = got["queued"]
    assert queued["values"] == list(range(6))
    assert queued["threads"] == queued["started"] == 2, "no more threads than max_threads"
    assert queued["seconds"] >= 0.14, "6 calls of 50 ms on 2 threads take 3 rounds"
    assert queued["busy_after"] == 0
    order = got["idle_order"]
    assert order["started"] == 4
    assert order["served_by"] == 1, "calls one at a time should all go to the thread that went idle last"
    assert order["together_values"] == [0, 1, 2, 3]
    assert order["together_seconds"] < 0.15, "4 calls of 50 ms at once on 4 threads should run side by side"
    assert got["timeout"] == [0, "still serving"]
    assert got["one_pool"] is True
    assert got["forked"] == [True, 7], "a forked child should make its own pool and get its call's value"
    assert got["onnx_max_diff"] < 1e-6
