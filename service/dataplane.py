"""What both APIs share: which models are loaded, whether they are ready, and running inference on them.

Models load in a background thread, so the process answers `/health` at once and `/ready` says 503 until every
version is loaded, checked and warm. With `poll_interval` > 0 the same thread re-scans the repository and loads
new versions (warm before they are visible: no downtime) and drops removed ones; `stop` ends it. Every gunicorn
worker has its own dataplane; what workers share (readiness) goes through the server's state folder.

A `ModelVersion` is what the loader knows of a version folder (loading, ready or failed, and why); once ready it
carries a `LoadedModel`, the only thing the APIs serve from.
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

from modelrepo import layout
from modelrepo import manifest as manifests
from modelrepo.layout import VersionDir
from modelrepo.manifest import Manifest, ManifestError
from service.batching import AdaptiveBatcher, Arrays, BatchObserver
from service.errors import NotFound, NotReady
from service.metrics import Metrics
from service.runtime import CUDA, ModelRuntime, install_problems
from service.schemas import ModelConfigSchema, flatten_errors
from service.settings import BatchPolicy, Settings
from service.workers import WorkerBoard

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class LoadError(Exception):
    """A version that cannot be served; the message says why."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A version that can serve: verified files, a warm onnxruntime session, its batching policy."""

    manifest: Manifest
    runtime: ModelRuntime
    policy: BatchPolicy
    batcher: AdaptiveBatcher | None  # None: batching off for this model

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version


@dataclass
class ModelVersion:
    entry: VersionDir
    state: State = State.LOADING
    reason: str = ""
    loaded: LoadedModel | None = None  # set exactly when state is READY

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> int:
        return self.entry.version

    @property
    def key(self) -> str:
        return self.entry.key

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": str(self.state),
            "reason": self.reason or None,
            "provider": self.loaded.runtime.provider if self.loaded else None,
        }


def relative(message: str, root: Path) -> str:
    """A message for clients: paths inside the repository relative to it (`lstm_step/1/model.onnx`), and no
    trace of where the repository is on the server."""
    for prefix in dict.fromkeys((str(root.resolve()), str(root.absolute()))):
        message = message.replace(prefix + "/", "").replace(prefix, "<repository>")
    return message


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = Path(settings.model_repository)
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._lock = threading.Lock()
        self._scan_error = ""
        self._first_scan = threading.Event()
        self._stopping = threading.Event()
        self._config_schema = ModelConfigSchema()
        self._workers = WorkerBoard(settings.state_dir, settings.worker_count)
        self.install_problems = install_problems()
        for problem in self.install_problems:
            log.error("broken onnxruntime install: %s", problem)
        self._thread = threading.Thread(target=self._watch, name="model-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End the loader (after the version it is loading) and refuse new work on every model."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            batchers = [v.loaded.batcher for v in self._all() if v.loaded and v.loaded.batcher]
        for batcher in batchers:
            batcher.stop()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until the first repository scan has loaded (or failed) every version found."""
        return self._first_scan.wait(timeout)

    # -------------------------------------------------------------------------------------------- loading

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sync()
                self._scan_error = ""
            except Exception as exc:  # a bad scan must not kill the watcher; the next one may succeed
                log.exception("repository scan failed")
                self._scan_error = relative(f"repository scan failed: {type(exc).__name__}: {exc}", self.root)
                self._first_scan.set()
            if self.settings.poll_interval <= 0:
                return
            self._stopping.wait(self.settings.poll_interval)

    def sync(self) -> None:
        """Load versions that appeared, drop versions that disappeared."""
        found = {(v.name, v.version): v for v in layout.scan(self.root)}
        with self._lock:
            known = {(v.name, v.version) for v in self._all()}
        new = [ModelVersion(found[key]) for key in sorted(found.keys() - known)]
        with self._lock:  # all visible as "loading" in /ready at once, none servable yet
            for version in new:
                self._models.setdefault(version.name, {})[version.version] = version
        for version in new:
            if self._stopping.is_set():
                break
            self._load(version)
        for name, number in sorted(known - found.keys()):
            self._unload(name, number)
        self._first_scan.set()
        self._workers.publish(self._own_readiness()[0])

    def _load(self, version: ModelVersion) -> None:
        started = time.perf_counter()
        try:
            loaded = self._open(version.entry)
        except (LoadError, ManifestError, OSError, RuntimeError, ValueError) as exc:  # onnxruntime: RuntimeError
            version.state, version.reason = State.FAILED, relative(str(exc), self.root)  # the log keeps the path
            log.error("model %s failed to load: %s", version.key, exc)
            return
        version.loaded, version.state = loaded, State.READY  # last: a version becomes servable only once complete
        provider = loaded.runtime.provider
        self.metrics.model_ready.labels(version.name, str(version.version), provider).set(1)
        log.info("model %s ready on %s in %.2fs", version.key, provider, time.perf_counter() - started)

    def _open(self, entry: VersionDir) -> LoadedModel:
        manifest = layout.read_version(entry)
        manifests.verify(entry.path, manifest)
        policy = self._policy(entry)
        runtime = ModelRuntime(entry.path, manifest, self.settings.provider, self.settings.ort_threads)
        runtime.warmup(self.settings.warmup_timesteps)
        if self.settings.require_gpu and runtime.provider != CUDA:
            raise LoadError(f"GPU required but onnxruntime runs it on {runtime.provider} (CUDA unavailable)")
        batcher = self._batcher(runtime, manifest, policy) if policy.enabled else None
        return LoadedModel(manifest, runtime, policy, batcher)

    def _policy(self, entry: VersionDir) -> BatchPolicy:
        raw = layout.read_model_config(entry.path.parent)
        try:
            config = self._config_schema.load(raw)
        except ValidationError as exc:
            lines = "; ".join(flatten_errors(exc.messages))
            raise LoadError(f"{entry.path.parent / layout.MODEL_CONFIG_FILE}: {lines}") from None
        return self.settings.batch_policy().merged(config["batching"])

    def _batcher(self, runtime: ModelRuntime, manifest: Manifest, policy: BatchPolicy) -> AdaptiveBatcher:
        name, m = manifest.name, self.metrics
        observer = BatchObserver(
            queue_seconds=m.queue_seconds.labels(name).observe,
            compute_seconds=m.compute_seconds.labels(name).observe,
            batch_sequences=m.batch_sequences.labels(name).observe,
            rejected=m.rejected.labels(name).inc,
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
        if version is None:
            return
        if version.loaded is not None:
            if version.loaded.batcher:
                version.loaded.batcher.stop()
            self.metrics.model_ready.labels(name, str(number), version.loaded.runtime.provider).set(0)
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

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """A servable version: the one asked for, or the newest ready one. 404 if unknown, 503 if not ready."""
        versions = self.versions(name)
        if version is None:
            ready = [v.loaded for v in versions if v.loaded is not None]
            if not ready:
                raise NotReady(f"model {name!r} has no ready version: {[v.describe() for v in versions]}")
            return ready[-1]
        chosen = next((v for v in versions if v.version == version), None)
        if chosen is None:
            raise NotFound(f"model {name!r} has no version {version}; versions: {[v.version for v in versions]}")
        if chosen.loaded is None:
            raise NotReady(f"model {chosen.key} is {chosen.state}" + (f": {chosen.reason}" if chosen.reason else ""))
        return chosen.loaded

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
            problems.append("the model repository (SEQSERVE_MODEL_REPOSITORY) does not exist")
        elif not states:
            problems.append("the model repository (SEQSERVE_MODEL_REPOSITORY) holds no model versions")
        for name, model_states in sorted(states.items()) if self._first_scan.is_set() else ():
            if self.settings.strict_readiness and any(s is not State.READY for s in model_states):
                problems.append(f"model {name!r}: not every version is ready (strict readiness)")
            elif not any(s is State.READY for s in model_states):
                problems.append(f"model {name!r} has no ready version")
        ready = not problems
        return ready, {"ready": ready, "problems": problems, "models": models}

    # -------------------------------------------------------------------------------------------- infer

    def infer(self, model: LoadedModel, inputs: Arrays) -> Arrays:
        """Run one request (through the batcher when on); `inputs` are validated arrays."""
        features = inputs["features"]
        if model.batcher is not None:
            outputs = model.batcher.submit(inputs)
        else:
            started = time.perf_counter()
            outputs = model.runtime.run(inputs)
            self.metrics.compute_seconds.labels(model.name).observe(time.perf_counter() - started)
            self.metrics.batch_sequences.labels(model.name).observe(features.shape[0])
        self.metrics.sequences.labels(model.name).inc(features.shape[0])
        self.metrics.timesteps.labels(model.name).inc(int(np.sum(inputs["lengths"])))
        return outputs
