"""What both APIs share: which models are loaded, whether they are ready, and running inference on them.

Models load in a background thread, so the process answers `/health` at once and `/ready` says 503 until every
version is loaded, checked and warm. With `poll_interval` > 0 the same thread re-scans the repository and loads
new versions (warm before they are visible: no downtime) and drops removed ones; `stop` ends it. Every gunicorn
worker has its own dataplane; what workers share (readiness) goes through the server's state folder.

With the model repository API on (an admin token), the same thread also watches the desired state that load and
unload requests write into the state folder (service/control.py) every `control_interval` seconds, and applies a
new generation: it loads the versions a model's policy selects, then unloads the others, but only once a selected
version is ready (a refused new version leaves the serving one in place), and acknowledges per worker. An unloaded
version leaves the lookup table first and is drained: requests that already hold it finish on it.

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

from marshmallow import ValidationError

from modelrepo import layout
from modelrepo import manifest as manifests
from modelrepo.layout import VersionDir
from modelrepo.manifest import Manifest, ManifestError
from service import graphcheck
from service.batching import AdaptiveBatcher, Arrays, BatchObserver
from service.concurrency import occupancy
from service.control import ControlFolder, Desired
from service.errors import NotFound, NotReady
from service.metrics import Metrics
from service.runtime import CUDA, ModelRuntime, install_problems
from service.schemas import ModelConfigSchema, flatten_errors
from service.settings import BatchPolicy, Settings
from service.workers import WorkerBoard

log = logging.getLogger(__name__)
STATE_TOLERANCE = 1e-5  # whole vs chunked through the state inputs, checked for every stateful version at load


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
        self.control = ControlFolder(settings.state_dir) if settings.admin_token and settings.state_dir else None
        self._applied = 0  # the generation of the desired state last applied
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
        poll, control = self.settings.poll_interval, self.settings.control_interval
        last_scan, attempted = float("-inf"), -1
        while not self._stopping.is_set():
            desired = self.control.read() if self.control else Desired()
            polled = poll > 0 and time.monotonic() - last_scan >= poll
            if polled or desired.generation != attempted:  # a failed generation is retried by polling only
                last_scan, attempted = time.monotonic(), desired.generation
                try:
                    self.sync(desired)
                    self._scan_error = ""
                except Exception as exc:  # a bad scan must not kill the watcher; the next one may succeed
                    log.exception("repository scan failed")
                    self._scan_error = relative(f"repository scan failed: {type(exc).__name__}: {exc}", self.root)
                    self._first_scan.set()
            intervals = [i for i in (poll, control if self.control else 0.0) if i > 0]
            if not intervals:  # nothing to watch: the first scan was all
                return
            self._stopping.wait(min(intervals))

    def sync(self, desired: Desired | None = None) -> None:
        """Load the versions that the repository holds and the desired state selects (all, by default), then unload
        the others; retry failed versions of a model that a newer request named."""
        desired = desired or Desired()
        found = {(v.name, v.version): v for v in layout.scan(self.root)}
        wanted = _select(found, desired)
        with self._lock:
            known = {(v.name, v.version): v.state for v in self._all()}
        retry = {
            k for k, state in known.items() if state is State.FAILED and desired.policy(k[0]).generation > self._applied
        }
        new = [ModelVersion(found[key]) for key in sorted(wanted - (known.keys() - retry))]
        with self._lock:  # all visible as "loading" in /ready at once, none servable yet
            for version in new:
                self._models.setdefault(version.name, {})[version.version] = version
        for version in new:
            if self._stopping.is_set():
                break
            self._load(version)
        for name, number in sorted(known.keys() - wanted):
            if (name, number) not in found:
                self._unload(name, number, "removed from the repository")
            elif self._replaceable(name, wanted, desired):
                self._unload(name, number, "not selected by the model's version policy")
            elif desired.generation != self._applied:
                log.warning("model %s/%d keeps serving: no version its policy selects is ready", name, number)
        self._applied = desired.generation
        self._first_scan.set()
        self._workers.publish(self._own_readiness()[0])
        if self.control is not None:
            self.control.acknowledge(desired.generation, self.version_states())

    def _replaceable(self, name: str, wanted: set[tuple[str, int]], desired: Desired) -> bool:
        """A version the policy no longer selects goes once a selected one of its model is ready, or at once when
        the model is unloaded; until then it keeps serving."""
        if desired.policy(name).kind == "none":
            return True
        with self._lock:
            versions = self._models.get(name, {})
            return any(v.state is State.READY for n, v in versions.items() if (name, n) in wanted)

    def version_states(self) -> dict[str, dict[str, dict[str, str]]]:
        """Every version this worker knows: `{name: {version: {"state", "reason"}}}`."""
        with self._lock:
            return {
                name: {str(n): {"state": str(v.state), "reason": v.reason} for n, v in versions.items()}
                for name, versions in self._models.items()
            }

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
        runtime = ModelRuntime(
            entry.path,
            manifest,
            self.settings.provider,
            self.settings.ort_threads,
            inline_below=self.settings.inline_below_ms / 1000,
            alone=occupancy.alone,  # short runs go inline when the worker has nothing else to do
        )
        graphcheck.check(entry.path / manifest.onnx_file, manifest, runtime.session)
        runtime.warmup(self.settings.warmup_timesteps)
        if (error := runtime.state_wiring_error()) > STATE_TOLERANCE:
            raise LoadError(
                f"state wiring check failed: a sequence run whole and in two chunks through "
                f"{[t.name for t in manifest.state_inputs]} differs by {error:.2e} (tolerance {STATE_TOLERANCE:.0e}): "
                "the state inputs and outputs do not match (are h and c swapped?); streams would be wrong"
            )
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
            queue_seconds=lambda s: m.observe(m.queue_seconds, (name,), s),
            compute_seconds=lambda s: m.observe(m.compute_seconds, (name,), s),
            batch_sequences=lambda n, stateful: m.observe(m.batch_sequences, (name, _flag(stateful)), n),
            rejected=lambda: m.inc(m.rejected, (name,)),
        )
        return AdaptiveBatcher(
            runtime.run,
            manifest,
            max_sequences=policy.max_sequences,
            max_cells=policy.max_cells,
            max_queue=policy.max_queue,
            max_queue_delay=policy.max_queue_delay_ms / 1000,
            max_run=policy.max_run_ms / 1000,
            timeout=self.settings.batch_timeout,
            observer=observer,
        )

    def _unload(self, name: str, number: int, why: str) -> None:
        """Out of the lookup table first (no new request finds it), then drained: requests that already hold the
        version finish on it; the session is freed with the last of them."""
        with self._lock:
            version = self._models.get(name, {}).pop(number, None)
            if name in self._models and not self._models[name]:
                del self._models[name]
        if version is None:
            return
        if version.loaded is not None:
            if version.loaded.batcher and not version.loaded.batcher.drain(self.settings.batch_timeout):
                log.warning(
                    "model %s: requests still running %gs after unloading", version.key, self.settings.batch_timeout
                )
            self.metrics.model_ready.labels(name, str(number), version.loaded.runtime.provider).set(0)
        log.info("model %s unloaded (%s)", version.key, why)

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
            m = self.metrics
            m.observe(m.compute_seconds, (model.name,), time.perf_counter() - started)
            m.observe(m.batch_sequences, (model.name, _flag(len(inputs) > 2)), features.shape[0])  # a state given
        self.metrics.inc(self.metrics.timesteps, (model.name,), int(inputs["lengths"].sum()))
        return outputs


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _select(found: dict[tuple[str, int], VersionDir], desired: Desired) -> set[tuple[str, int]]:
    """The (name, version) pairs of the repository that the desired state selects."""
    numbers: dict[str, list[int]] = {}
    for name, number in found:
        numbers.setdefault(name, []).append(number)
    return {(name, n) for name, available in numbers.items() for n in desired.policy(name).select(available)}
