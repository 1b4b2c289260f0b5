"""gunicorn settings for `gunicorn --config gunicorn.conf.py 'service:create_app()'`, from SEQSERVE_* variables.

gthread workers: onnxruntime releases the GIL, so threads overlap request parsing with inference, and the
adaptive batcher merges what the threads of one worker bring. No `preload_app`: onnxruntime sessions (and any
CUDA context) must be created in each worker after the fork, not inherited (benoitc/gunicorn#1891).
"""

import os
import shutil
import tempfile

bind = os.environ.get("SEQSERVE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SEQSERVE_WORKERS", "0")) or min(os.cpu_count() or 1, 4)
os.environ["SEQSERVE_WORKERS"] = str(workers)  # the app splits the CPU threads between workers
worker_class = "gthread"
threads = int(os.environ.get("SEQSERVE_THREADS", "16"))
timeout = int(os.environ.get("SEQSERVE_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("SEQSERVE_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("SEQSERVE_KEEPALIVE", "75"))  # above common load-balancer idle timeouts
backlog = 2048
preload_app = False
accesslog = None  # the app logs each request as JSON, with its request id
errorlog = "-"
loglevel = os.environ.get("SEQSERVE_LOG_LEVEL", "info").lower()
# Workers write Prometheus samples into a shared folder; a fresh one per server start.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="seqserve-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def on_reload(server):
    # After SIGHUP the master spawns new workers and stops the old ones at once: new workers must not take
    # requests before their models are loaded, or clients would see 503s. Meanwhile connections wait in the
    # listen backlog. (Not at first start: then /ready tells the orchestrator when to send traffic.)
    os.environ["GUNICORN_RELOADED_SEQSERVE"] = "1"


def post_worker_init(worker):
    if os.environ.get("GUNICORN_RELOADED_SEQSERVE") == "1":
        from service import wait_loaded

        wait_loaded(worker.wsgi, timeout=max(timeout - 5, 1))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
