"""How each server of the benchmark is started, with the same CPU budget for all: `workers` processes (gunicorn
workers, KServe uvicorn workers) of `intra_op_threads` onnxruntime threads each. A server that cannot run here
(no service/ yet, a peer venv that failed to install) comes back as a reason to skip it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.fixtures import ExportedModel
from bench.servers import PortAllocator, Server
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class CpuBudget:
    """What seqserve gets by default (service.settings), given to every contender."""

    workers: int
    threads: int  # gunicorn gthread threads per worker
    intra_op_threads: int  # onnxruntime threads per worker
    worker_class: str

    @classmethod
    def service_defaults(
        cls, workers: int | None = None, threads: int | None = None, worker_class: str | None = None
    ) -> CpuBudget:
        """The service's own defaults (service.settings, as gunicorn.conf.py reads them), with these overrides."""
        overrides = {"workers": workers, "threads": threads, "worker_class": worker_class}
        settings = Settings.from_mapping({k: v for k, v in overrides.items() if v is not None})
        return cls(settings.worker_count, settings.threads, settings.ort_threads, settings.worker_class)

    def describe(self) -> str:
        gunicorn = f"gunicorn {self.worker_class} workers"
        if self.worker_class == "gthread":
            gunicorn += f" with {self.threads} threads each"
        return f"{self.workers} worker process(es) x {self.intra_op_threads} onnxruntime intra-op thread(s); {gunicorn}"


def peer_python(peer: str) -> Path:
    return ROOT / "bench" / f".venv-{peer}" / "bin" / "python"


def seqserve_missing() -> str | None:
    if not (ROOT / "service" / "__init__.py").is_file() or not (ROOT / "gunicorn.conf.py").is_file():
        return "service/ or gunicorn.conf.py is not in this tree yet"
    return None


def peer_missing(peer: str) -> str | None:
    if not (ROOT / "bench" / f".venv-{peer}" / ".installed").is_file():
        return f"bench/.venv-{peer} is not installed (`make bench-peers`; see bench/results/install-{peer}.log)"
    return None


def _gunicorn(name: str, app: str, port: int, budget: CpuBudget, logs: Path, env: dict[str, str]) -> Server:
    """Under seqserve's own gunicorn.conf.py, so that the bare app gets exactly seqserve's gunicorn settings."""
    env = {
        "SEQSERVE_BIND": f"127.0.0.1:{port}",
        "SEQSERVE_WORKERS": str(budget.workers),
        "SEQSERVE_THREADS": str(budget.threads),
        "SEQSERVE_WORKER_CLASS": budget.worker_class,
        "SEQSERVE_INTRA_OP_THREADS": str(budget.intra_op_threads),
        **env,
    }
    argv = [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", app]
    return Server(name, argv, port, "/ready", logs / f"{name}.log", env, ROOT)


def seqserve(
    name: str,
    batching: bool,
    repository: Path,
    port: int,
    budget: CpuBudget,
    logs: Path,
    env: dict[str, str] | None = None,
) -> Server:
    env = {"SEQSERVE_MODEL_REPOSITORY": str(repository), "SEQSERVE_BATCHING": str(batching).lower(), **(env or {})}
    return _gunicorn(name, "service:create_app()", port, budget, logs, env)


def bare(port: int, budget: CpuBudget, logs: Path) -> Server:
    return _gunicorn("bare", "bench.apps.bare:create_app()", port, budget, logs, {})


def naive(models: dict[str, ExportedModel], port: int, logs: Path) -> Server:
    argv = [sys.executable, "-m", "bench.apps.naive", "--port", str(port)]
    for name, model in models.items():
        argv += ["--model", f"{name}={model.checkpoint.parent}"]
    return Server("naive", argv, port, "/ready", logs / "naive.log", {}, ROOT)


def kserve(models: dict[str, ExportedModel], ports: PortAllocator, budget: CpuBudget, logs: Path) -> Server:
    port = ports.take()
    argv = [str(peer_python("kserve")), "-m", "bench.apps.kserve_server", "--http_port", str(port)]
    argv += ["--grpc_port", str(ports.take()), "--enable_grpc", "false", "--workers", str(budget.workers)]
    argv += ["--intra_op_threads", str(budget.intra_op_threads), "--enable_latency_logging", "false"]
    argv += ["--log_config_file", str(ROOT / "bench" / "apps" / "kserve_logging.json")]
    for name, model in models.items():
        argv += ["--model", f"{name}={model.onnx.resolve()}"]
    return Server("kserve", argv, port, "/v2/health/ready", logs / "kserve.log", {"PYTHONPATH": str(ROOT)}, ROOT)


def mlserver(
    name: str, models: dict[str, ExportedModel], ports: PortAllocator, budget: CpuBudget, logs: Path, pool: bool
) -> Server:
    """`mlserver start FOLDER` on a settings folder written here: no debug, no gzip, metrics on a loopback port.
    Inference in the server process (`parallel_workers` 0, all onnxruntime threads in one session) or, with
    `pool`, in `budget.workers` inference processes (MLServer's default design); neither wins everywhere."""
    folder, port = logs / name, ports.take()
    parallel_workers = budget.workers if pool else 0
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": ports.take(),
        "metrics_port": ports.take(),
        "debug": False,
        "gzip_enabled": False,
        "parallel_workers": parallel_workers,
        "metrics_dir": str(folder / "metrics"),  # MLServer's default is `.metrics` in its working directory
    }
    _write_json(folder / "settings.json", settings)
    threads = budget.intra_op_threads * (budget.workers if parallel_workers == 0 else 1)
    for name, model in models.items():
        _write_json(
            folder / name / "model-settings.json",
            {
                "name": name,
                "implementation": "bench.apps.mlserver_runtime.OnnxSequenceRuntime",
                "parameters": {"uri": str(model.onnx.resolve()), "extra": {"intra_op_threads": threads}},
            },
        )
    argv = [str(peer_python("mlserver").parent / "mlserver"), "start", str(folder)]
    return Server(name, argv, port, "/v2/health/ready", logs / f"{name}.log", {"PYTHONPATH": str(ROOT)}, ROOT)


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
