"""What both APIs share: which models are loaded, whether they are ready, and running inference on them.

Models load in a background thread, so the process answers `/health` at once and `/ready` says 503 until every
version is loaded, checked and warm. With `poll_interval` > 0 the same thread re-scans the repository and loads
new versions (warm before they are visible: no downtime) and drops removed ones. Every gunicorn worker has its own
dataplane; nothing here is shared between workers or replicas.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from marshmallow import ValidationError

from service import metrics
from service.batching import AdaptiveBatcher, Arrays, BatchObserver
from service.errors import NotFound, NotReady
from service.repository import (
    MODEL_CONFIG_FILE,
    LoadError,
    Manifest,
    VersionDir,
    read_manifest,
    read_model_config,
    scan,
    verify_files,
)
from service.runtime import CUDA, ModelRuntime, install_problems
from service.schemas import ModelConfigSchema, flatten_errors
from service.settings import BatchPolicy, Settings
from service.workers import WorkerBoard

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    state: State = State.LOADING
    reason: str = ""
    manifest: Manifest | None = None
    runtime: ModelRuntime | None = None
    batcher: AdaptiveBatcher | None = None
    policy: BatchPolicy | None = None  # adaptive batching, after the model's config.json

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def provider(self) -> str | None:
        return self.runtime.provider if self.runtime else None

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": str(self.state),
            "reason": self.reason or None,
            "provider": self.provider,
        }


class DataPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository)
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._lock = threading.Lock()
        self._scan_error = ""
        self._first_scan = threading.Event()
        self._config_schema = ModelConfigSchema()
        self._workers = WorkerBoard(settings.state_dir, settings.workers)
        self.install_problems = install_problems()
        for problem in self.install_problems:
            log.error("broken onnxruntime install: %s", problem)
        self._thread = threading.Thread(target=self._watch, name="model-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until the first repository scan has loaded (or failed) every version found."""
        return self._first_scan.wait(timeout)

    # -------------------------------------------------------------------------------------------- loading

    def _watch(self) -> None:
        while True:
            try:
                self.sync()
                self._scan_error = ""
            except Exception as exc:  # a bad scan must not kill the watcher; the next one may succeed
                log.exception("repository scan failed")
                self._scan_error = f"repository scan failed: {type(exc).__name__}: {exc}"
                self._first_scan.set()
            if self.settings.poll_interval <= 0:
                return
            time.sleep(self.settings.poll_interval)

    def sync(self) -> None:
        """Load versions that appeared, drop versions that disappeared."""
        found = {(v.name, v.version): v for v in scan(self.root)}
        with self._lock:
            known = {(v.name, v.version) for v in self._all()}
        new = [
            ModelVersion(found[key].name, found[key].version, found[key].path) for key in sorted(found.keys() - known)
        ]
        with self._lock:  # all visible as "loading" in /ready at once, none servable yet
            for version in new:
                self._models.setdefault(version.name, {})[version.version] = version
        for version in new:
            self._load(version)
        for name, number in sorted(known - found.keys()):
            self._unload(name, number)
        self._first_scan.set()
        self._workers.publish(self._own_readiness()[0])

    def _load(self, version: ModelVersion) -> None:
        entry = VersionDir(version.name, version.version, version.path)
        started = time.perf_counter()
        try:
            manifest = read_manifest(entry)
            verify_files(entry, manifest)
            policy = self._policy(entry)
            runtime = ModelRuntime(entry.path, manifest, self.settings.provider, self.settings.ort_threads)
            runtime.warmup(self.settings.warmup_timesteps)
        except (LoadError, OSError, RuntimeError, ValueError) as exc:  # onnxruntime raises RuntimeError subclasses
            version.state, version.reason = State.FAILED, str(exc)
            log.error("model %s failed to load: %s", version.key, exc)
            return
        version.manifest, version.runtime = manifest, runtime
        if self.settings.require_gpu and runtime.provider != CUDA:
            version.state = State.FAILED
            version.reason = f"GPU required but onnxruntime runs it on {runtime.provider} (CUDA unavailable)"
            log.error("model %s: %s", version.key, version.reason)
            return
        version.policy = policy
        if policy.enabled:
            version.batcher = self._batcher(runtime, manifest, policy)
        version.state = State.READY  # last: a version becomes servable only once complete
        metrics.MODEL_READY.labels(entry.name, str(entry.version), runtime.provider).set(1)
        log.info("model %s ready on %s in %.2fs", version.key, runtime.provider, time.perf_counter() - started)

    def _policy(self, entry: VersionDir) -> BatchPolicy:
        raw = read_model_config(entry.path.parent)
        try:
            config = self._config_schema.load(raw)
        except ValidationError as exc:
            lines = "; ".join(flatten_errors(exc.messages))
            raise LoadError(f"{entry.path.parent / MODEL_CONFIG_FILE}: {lines}") from None
        return self.settings.batch_policy().merged(config["batching"])

    def _batcher(self, runtime: ModelRuntime, manifest: Manifest, policy: BatchPolicy) -> AdaptiveBatcher:
        name = manifest.name
        observer = BatchObserver(
            queue_seconds=metrics.QUEUE_SECONDS.labels(name).observe,
            compute_seconds=metrics.COMPUTE_SECONDS.labels(name).observe,
            batch_sequences=metrics.BATCH_SEQUENCES.labels(name).observe,
            rejected=metrics.REJECTED.labels(name).inc,
        )
        return AdaptiveBatcher(
            runtime.run,
            manifest,
            max_sequences=policy.max_sequences,
            max_cells=policy.max_cells,
            max_queue=policy.max_queue,
            max_queue_delay=policy.max_queue_delay_ms / 1000,
            timeout=self.settings.batch_timeout,
            observer=observer,
        )

    def _unload(self, name: str, number: int) -> None:
        with self._lock:
            version = self._models.get(name, {}).pop(number, None)
            if name in self._models and not self._models[name]:
                del self._models[name]
        if version is not None:
            if version.batcher:
                version.batcher.stop()
            if version.runtime:
                metrics.MODEL_READY.labels(name, str(number), version.runtime.provider).set(0)
            log.info("model %s unloaded (removed from the repository)", version.key)

    # ------------------------------------------------------------------------------------------ queries

    def _all(self) -> list[ModelVersion]:
        return [v for versions in self._models.values() for v in versions.values()]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        with self._lock:
            versions = self._models.get(name)
            if not versions and not self._first_scan.is_set():
                raise NotReady("the model repository is still being scanned; retry shortly")
            if not versions:
                raise NotFound(f"model {name!r} not found; available: {sorted(self._models)}")
            return [versions[v] for v in sorted(versions)]

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A servable version: the one asked for, or the newest ready one. 404 if unknown, 503 if not ready."""
        versions = self.versions(name)
        if version is None:
            ready = [v for v in versions if v.state is State.READY]
            if not ready:
                raise NotReady(f"model {name!r} has no ready version: {[v.describe() for v in versions]}")
            return ready[-1]
        chosen = next((v for v in versions if v.version == version), None)
        if chosen is None:
            raise NotFound(f"model {name!r} has no version {version}; versions: {[v.version for v in versions]}")
        if chosen.state is not State.READY:
            raise NotReady(f"model {chosen.key} is {chosen.state}" + (f": {chosen.reason}" if chosen.reason else ""))
        return chosen

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the first scan is done and every model has a ready version (every version, with
        `strict_readiness`), in this worker and in every other worker of the server. A broken new version
        of a served model is reported but does not take the service out of rotation."""
        ready, report = self._own_readiness()
        workers = self._workers.status()
        if workers is not None:
            report["workers"] = workers
            if workers["ready"] < workers["expected"]:
                report["problems"].append(f"{workers['ready']} of {workers['expected']} workers ready")
                ready = report["ready"] = False
        return ready, report

    def _own_readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            models = {
                name: [v.describe() for v in versions.values()] for name, versions in sorted(self._models.items())
            }
            states = {name: [v.state for v in versions.values()] for name, versions in self._models.items()}
        problems = list(self.install_problems)
        if self._scan_error:
            problems.append(self._scan_error)
        elif not self._first_scan.is_set():
            problems.append("model repository not scanned yet")
        elif not self.root.is_dir():
            problems.append(f"model repository {str(self.root)!r} does not exist")
        elif not states:
            problems.append(f"model repository {str(self.root)!r} holds no model versions")
        for name, model_states in sorted(states.items()) if self._first_scan.is_set() else ():
            if self.settings.strict_readiness and any(s is not State.READY for s in model_states):
                problems.append(f"model {name!r}: not every version is ready (strict readiness)")
            elif not any(s is State.READY for s in model_states):
                problems.append(f"model {name!r} has no ready version")
        ready = not problems
        return ready, {"ready": ready, "problems": problems, "models": models}

    # -------------------------------------------------------------------------------------------- infer

    def infer(self, model: ModelVersion, inputs: Arrays) -> Arrays:
        """Run one request (through the batcher when on); `inputs` are validated arrays."""
        assert model.runtime is not None
        features = inputs["features"]
        if model.batcher is not None:
            outputs = model.batcher.submit(inputs)
        else:
            started = time.perf_counter()
            outputs = model.runtime.run(inputs)
            metrics.COMPUTE_SECONDS.labels(model.name).observe(time.perf_counter() - started)
            metrics.BATCH_SEQUENCES.labels(model.name).observe(features.shape[0])
        metrics.SEQUENCES.labels(model.name).inc(features.shape[0])
        metrics.TIMESTEPS.labels(model.name).inc(int(np.sum(inputs["lengths"])))
        return outputs
