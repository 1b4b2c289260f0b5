"""Typed settings, read once from `SEQSERVE_*` environment variables (or a mapping): by the app factory in each
worker, and by gunicorn.conf.py in the master for the process settings.

Every field maps to one variable: `max_sequences` <- `SEQSERVE_MAX_SEQUENCES`. `bind`, `workers`, `worker_class`,
`threads`, `timeout`, `graceful_timeout` and `keepalive` are gunicorn's: gunicorn.conf.py reads them from here, so
each default lives in this file only, and the app knows the worker count to split the CPU threads between them.
This module imports nothing but the standard library (the gunicorn master imports it).

Secrets (`secret()` fields: the admin token, the state key) are kept out of `repr` (so a logged `Settings` shows
none), masked by `public()`, and never echoed by an error message about their value. tests/security checks that
every setting named like a secret is declared with `secret()` and that a running server logs none of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

PREFIX = "SEQSERVE_"
PROVIDERS = ("auto", "cpu", "cuda")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


SECRET = "secret"


def secret() -> Any:
    """A setting never shown: not in `repr`, masked by `Settings.public()`, not echoed in error messages."""
    return field(default="", repr=False, metadata={SECRET: True})


@dataclass(frozen=True)
class BatchPolicy:
    """Adaptive batching for one model: the server's defaults, overridden by the model's `config.json`."""

    enabled: bool = True
    max_sequences: int = 256
    max_cells: int = 64 * 512
    max_queue_delay_ms: float = 0.0
    max_run_ms: float = 5.0
    max_queue: int = 256

    def merged(self, overrides: dict[str, Any]) -> BatchPolicy:
        return replace(self, **overrides)


@dataclass(frozen=True)
class Settings:
    model_repository: str = "model_repository"
    # onnxruntime
    provider: str = "auto"  # auto: CUDA when onnxruntime offers it, else CPU
    require_gpu: bool = False  # a CPU fallback makes the service not ready
    intra_op_threads: int = 0  # 0: cores / workers
    warmup_timesteps: int = 100
    inline_below_ms: float = 5.0  # gevent: shorter model calls run inline when the worker has no other (0: never)
    poll_interval: float = 0.0  # seconds between repository scans; 0: load once at start
    strict_readiness: bool = False  # ready only when every version is; default: every model has a ready version
    state_dir: str = ""  # shared by the workers of one server (gunicorn.conf.py sets it): readiness across workers
    # model repository API (service/api_repository.py): off unless SEQSERVE_ADMIN_TOKEN (below) is set
    control_interval: float = 0.2  # seconds between a worker's looks at the desired model state (with a token)
    admin_timeout: float = 50.0  # a load/unload answers within this, applied by every worker or not
    # request limits
    max_body_bytes: int = 64 * 1024 * 1024
    max_sequences: int = 1024
    max_timesteps: int = 10_000  # per sequence
    inspect_max_timesteps: int = 0  # one inspected sequence; 0: 512 for per-timestep heads, 64 for `last` heads
    # adaptive batching, per model and worker
    batching: bool = True
    batch_max_sequences: int = 256
    batch_max_cells: int = 64 * 512  # sequences x longest sequence in one merged run
    batch_max_queue_delay_ms: float = 0.0  # 0: never wait for company when the model is free
    batch_max_run_ms: float = 5.0  # a merged run stops growing at this expected compute time (0: no bound)
    batch_max_queue: int = 256  # pending requests beyond which the answer is 503 + Retry-After
    batch_timeout: float = 30.0
    # streams (service/streams.py): v1 state tokens and V2 sequences
    state_ttl: float = 86_400.0  # seconds a state token stays valid
    sequence_store: str = ""  # "": SQLite in the state folder (one server); redis://host:port/db: shared by replicas
    sequence_idle_s: float = 60.0  # a V2 sequence idle this long expires (Triton's max_sequence_idle_microseconds)
    # secrets: never in repr, logs or error messages
    admin_token: str = secret()  # SEQSERVE_ADMIN_TOKEN: the model repository API takes `Authorization: Bearer` it
    state_key: str = secret()  # SEQSERVE_STATE_KEY: signs stream-state tokens; "": random per server (warned)
    # process
    log_level: str = "INFO"
    log_requests: bool = True
    fast_path: bool = True  # the inference endpoints' common requests skip Flask's machinery (service/lane.py)
    bind: str = "127.0.0.1:8000"
    workers: int = 0  # 0: one per core, at most 4 (gunicorn worker processes)
    threads: int = 16
    timeout: int = 60
    graceful_timeout: int = 30
    worker_class: str = "gevent"
    worker_connections: int = 1000
    keepalive: int = 5
    gc_threshold: int = 20_000  # each worker's cyclic GC: first-generation threshold (gunicorn.conf.py); 0: Python's

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"SEQSERVE_PROVIDER: {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        for name in ("max_body_bytes", "max_sequences", "max_timesteps", "batch_max_sequences", "batch_max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"SEQSERVE_{name.upper()} must be >= 1, got {getattr(self, name)}")
        if self.gc_threshold < 0:
            raise ValueError(f"SEQSERVE_GC_THRESHOLD must be >= 0 (0: Python's own), got {self.gc_threshold}")
        for name in ("batch_max_queue_delay_ms", "batch_max_run_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"SEQSERVE_{name.upper()} must be >= 0, got {getattr(self, name)}")
        if self.inspect_max_timesteps < 0:
            raise ValueError(
                f"SEQSERVE_INSPECT_MAX_TIMESTEPS must be >= 0 (0: by head), got {self.inspect_max_timesteps}"
            )
        for name in ("state_ttl", "sequence_idle_s", "control_interval", "admin_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SEQSERVE_{name.upper()} must be > 0, got {getattr(self, name)}")

    @classmethod
    def secret_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.metadata.get(SECRET)]

    def public(self) -> dict[str, Any]:
        """Every setting, secrets masked (`***` when set): what may be logged or shown."""
        hidden = set(self.secret_names())
        return {
            f.name: ("***" if getattr(self, f.name) else "") if f.name in hidden else getattr(self, f.name)
            for f in fields(self)
        }

    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(
            enabled=self.batching,
            max_sequences=self.batch_max_sequences,
            max_cells=self.batch_max_cells,
            max_queue_delay_ms=self.batch_max_queue_delay_ms,
            max_run_ms=self.batch_max_run_ms,
            max_queue=self.batch_max_queue,
        )

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else min(os.cpu_count() or 1, 4)

    @property
    def ort_threads(self) -> int:
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.worker_count)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """`SEQSERVE_*` variables (the process environment by default), then `overrides` (keys without the prefix)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {k[len(PREFIX) :]: v for k, v in environ.items() if k.startswith(PREFIX)}
        return cls.from_mapping({**values, **(overrides or {})})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Keys as in the environment without the prefix, any case. Unknown keys are an error, so that a typo
        does not silently keep a default."""
        known = {f.name: f for f in fields(cls)}
        values = {k.lower(): v for k, v in values.items()}
        if unknown := sorted(set(values) - set(known)):
            raise ValueError(f"unknown settings {['SEQSERVE_' + k.upper() for k in unknown]}")
        return cls(
            **{k: _convert(k, str(known[k].type), v, known[k].metadata.get(SECRET, False)) for k, v in values.items()}
        )


def _convert(name: str, kind: str, value: Any, hidden: bool = False) -> Any:
    text = str(value).strip()
    try:
        if kind == "bool":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        shown = "its value" if hidden else repr(value)
        raise ValueError(f"SEQSERVE_{name.upper()}: cannot read {shown} as {kind}") from None
    return text
