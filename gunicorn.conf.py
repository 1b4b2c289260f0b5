"""gunicorn settings for `gunicorn --config gunicorn.conf.py 'service:create_app()'`, from SEQSERVE_* variables
read through `service.settings` (where every default lives).

Worker class, chosen by measurement (docs/benchmarks.md): gevent. One OS thread per worker, a greenlet per
connection, and onnxruntime calls handed to a pool of real threads (service/concurrency.py), so requests
keep being parsed and queued while a model computes; the adaptive batcher merges what queued. On the 2-core
development machine this used ~30 % less CPU per small request than gthread (where 16 threads per worker fight
over the GIL) and twice the throughput with batching on a 128-unit LSTM at 32 clients. `SEQSERVE_WORKER_CLASS=
gthread` (with `SEQSERVE_THREADS`) is the alternative. With gevent the worker class is gunicorn's own gevent worker
with one addition (service/worker.py): the inference endpoints' plain requests go from the connection's bytes
straight to the app's inference lane, skipping gunicorn's per-request objects; everything else is gunicorn's.
One worker per core by default (at most 4), each onnxruntime session with cores/workers intra-op threads.

No `preload_app`: onnxruntime sessions (and any CUDA context) must be created in each worker after the fork, not
inherited (benoitc/gunicorn#1891). The master imports `service.settings` only.

Which workers wait for their models before they take a request: every one but the first set. At first start the
process answers /health at once and /ready tells the orchestrator when to send traffic. Any later worker joins
siblings that are already serving: a crash respawn (SIGKILL, OOM, worker timeout), the new set after SIGHUP, one more
after TTIN. It must not accept a connection before its models are loaded, or it would answer 503 while its
siblings could have answered 200; meanwhile the connections go to the siblings or wait in the listen backlog.
`pre_fork` tells them apart by the worker's age (gunicorn numbers the forks of one master from 1; the first
`workers` of them are the first set) and `post_worker_init` waits in the marked ones.
"""

import gc
import os
import pathlib
import queue
import shutil
import signal
import tempfile
import time

from service.settings import Settings

_settings = Settings.from_environ()  # an unknown or malformed SEQSERVE_ variable stops the server here
bind = _settings.bind
workers = _settings.worker_count
# gevent: gunicorn's gevent worker with a direct path for the inference lane's requests (service/worker.py)
worker_class = "service.worker.LaneWorker" if _settings.worker_class == "gevent" else _settings.worker_class
worker_connections = _settings.worker_connections  # gevent: per worker
threads = _settings.threads  # gthread only
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
# Idle keep-alive connections stay open this long. Under gevent it is also how long an idle client connection
# can hold up a graceful stop; behind a load balancer that reuses connections, set it above the balancer's idle
# timeout (and SEQSERVE_GRACEFUL_TIMEOUT above that).
keepalive = _settings.keepalive
backlog = 2048
# Requests are parsed by gunicorn-h1c's C parser (a pinned dependency); "fast" fails at start if it is missing,
# rather than falling back to the Python parser unnoticed.
http_parser = "fast"
preload_app = False
accesslog = None  # the app logs each request as JSON, with its request id
errorlog = "-"
loglevel = _settings.log_level.lower()
# Workers write Prometheus samples, and their readiness, into shared folders; fresh ones per server start. Those
# made here are removed when the server stops (on_exit); their names travel in the environment, so a master
# re-executed by USR2, or a SIGHUP re-reading this file, keeps and later removes the same ones.
_TEMP = "_SEQSERVE_TEMP_FOLDERS"
_made = [f for f in os.environ.get(_TEMP, "").split(os.pathsep) if f]
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made.append(tempfile.mkdtemp(prefix="seqserve-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made[-1]
if not _settings.state_dir:
    _made.append(tempfile.mkdtemp(prefix="seqserve-state-"))
    os.environ["SEQSERVE_STATE_DIR"] = _made[-1]
os.environ[_TEMP] = os.pathsep.join(_made)
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_state_dir = os.environ["SEQSERVE_STATE_DIR"]


def on_starting(server):
    for folder in (_metrics_dir, _state_dir):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)


def on_exit(server):
    # Not while a master started by USR2 still runs on these folders.
    if not getattr(server, "reexec_pid", 0):
        for folder in _made:
            shutil.rmtree(folder, ignore_errors=True)


def when_ready(server):
    # Before the first workers are forked (and not again on SIGHUP). A master started by USR2 joins a serving
    # server (the old master's workers): none of its workers is a first one.
    server.seqserve_first_set = 0 if server.master_pid else server.num_workers


def pre_fork(server, worker):
    worker.seqserve_joins_serving = worker.age > getattr(server, "seqserve_first_set", 0)


def post_fork(server, worker):
    # Until the worker installs its own signal handlers, a signal reaching it runs the master's handler, which only
    # queues it into the child's copy of the master's queue: lost. A SIGTERM to a worker still booting (a deploy
    # while a crashed worker is being replaced) would leave it serving until the master kills it at the graceful
    # timeout, with whatever it is answering then. post_worker_init replays what landed there.
    worker.seqserve_early_signals = server.SIG_QUEUE


def post_worker_init(worker):
    _replay_early_signals(worker)
    if getattr(worker, "seqserve_joins_serving", False):
        _wait_for_models(worker)
    _tune_gc(worker)


def _wait_for_models(worker):
    from service.app import wait_loaded

    deadline = time.monotonic() + max(timeout - 5, 1)  # the master kills a silent worker after `timeout`
    while worker.alive and not wait_loaded(worker.wsgi, timeout=0.2):
        if time.monotonic() > deadline:
            worker.log.warning("worker %s serves before its first repository scan ended", worker.pid)
            return


def _tune_gc(worker):
    """Python's cyclic GC, as it comes, runs a young collection every 700 new container objects, and a full one
    over every object of the process every so often. A 64x50 JSON body parses into 3,300 lists, so each such
    request set off several collections, and the full ones went through the ~75,000 objects that importing Flask,
    numpy and onnxruntime made. So, once the app is built, `gc.freeze()` moves what boot made out of the
    collector's sight for good (as Python's documentation advises for forking servers), and a young collection
    waits for SEQSERVE_GC_THRESHOLD new objects still alive (a request's parsed body is freed by then). Cycles are
    still collected; 0 leaves Python's settings. Interleaved A/B (`python -m bench.ab`, h32 64x50 v1 JSON at 8
    clients, 6 rounds): 4,433 -> 3,275 us of server CPU per request, p99 76 -> 25 ms; binary bodies and 1x50
    requests the same within noise."""
    if not _settings.gc_threshold:
        return
    gc.freeze()
    gc.set_threshold(_settings.gc_threshold, *gc.get_threshold()[1:])
    worker.log.info(
        "worker %s: gc threshold %s, %s objects frozen", worker.pid, gc.get_threshold(), gc.get_freeze_count()
    )


def _replay_early_signals(worker):
    early = getattr(worker, "seqserve_early_signals", None)
    while early is not None:
        try:
            sig = early.get_nowait()
        except queue.Empty:
            return
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            os.kill(os.getpid(), sig)  # now to the worker's own handler


def worker_exit(server, worker):
    if getattr(worker, "wsgi", None) is not None:  # None: the app failed to build
        from service.app import close_app

        close_app(worker.wsgi)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    # Its readiness and its acknowledgements of model changes no longer count (service/workers.py,
    # service/control.py; not imported here: the master stays free of the app).
    pathlib.Path(_state_dir, f"worker-{worker.pid}").unlink(missing_ok=True)
    pathlib.Path(_state_dir, f"ack-{worker.pid}.json").unlink(missing_ok=True)
