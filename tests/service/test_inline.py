"""A short model call runs in the calling greenlet only when the worker has no other client connection open
(service/runtime.py `_call`, service/concurrency.py `Occupancy`). Checked on the real onnxruntime session
under gevent's monkey patching, in a subprocess (patching this pytest process would change every other test):
the OS thread that ran `InferenceSession.run` says whether it was inline or handed to gevent's thread pool."""

from __future__ import annotations

import textwrap
from pathlib import Path

from service.concurrency import Occupancy
from tests.service.conftest import run_gevent_script

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import sys
    from pathlib import Path

    import gevent
    import numpy as np

    from modelrepo import layout
    from service.concurrency import Occupancy
    from service.runtime import ModelRuntime

    repository, inline_below = Path(sys.argv[1]), float(sys.argv[2])
    main_thread = monkey.get_original("threading", "get_native_id")()
    occupancy = Occupancy()
    occupancy.tracking = True  # as service/worker.py sets it; each greenlet below is a connection, as in `handle`
    entry = layout.VersionDir("lstm_step", 1, repository / "lstm_step" / "1")
    runtime = ModelRuntime(entry.path, layout.read_version(entry), "cpu", 1, inline_below, occupancy.alone)
    runtime.warmup(20)
    ran_on = []
    session_run = runtime.session.run

    def recording_run(*args):
        ran_on.append(monkey.get_original("threading", "get_native_id")() == main_thread)
        return session_run(*args)

    runtime.session.run = recording_run
    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, 20, runtime.manifest.input_dim)).astype(np.float32)
    inputs = {"features": features, "lengths": np.array([20])}
    expected = session_run(runtime.output_names, inputs)[0]

    def connection():
        with occupancy:
            gevent.sleep(0)  # waits for its request's bytes: the other connections open meanwhile
            got = runtime.run(inputs)["probabilities"]
        assert np.abs(got - expected).max() < 1e-6

    def inline_flags(concurrent):
        ran_on.clear()
        gevent.joinall([gevent.spawn(connection) for _ in range(concurrent)], raise_error=True)
        return list(ran_on)

    print(json.dumps({"alone": inline_flags(1), "two": inline_flags(2), "count_after": occupancy.count}))
    """
)


def run_under_gevent(repository: Path, inline_below: float) -> dict:
    return run_gevent_script(SCRIPT, str(repository), str(inline_below))


def test_a_short_call_runs_inline_only_when_alone(model_repository):
    got = run_under_gevent(model_repository, inline_below=1.0)
    assert got["alone"] == [True], "a lone short request should run in its own greenlet"
    # Two connections: neither run holds the other's request, so both go to the pool.
    assert got["two"] == [False, False]
    assert got["count_after"] == 0


def test_a_call_expected_to_take_longer_goes_to_the_pool(model_repository):
    got = run_under_gevent(model_repository, inline_below=1e-9)
    assert got["alone"] == [False]
    assert got["two"] == [False, False]


def test_nothing_runs_inline_where_the_worker_does_not_count():
    occupancy = Occupancy()  # gthread workers, gunicorn's stock gevent handling, Flask's test client
    with occupancy:
        assert occupancy.count == 1
        assert occupancy.alone(1) is False
    assert occupancy.count == 0
    occupancy.tracking = True
    with occupancy, occupancy:
        assert not occupancy.alone(1)
        assert occupancy.alone(2)
