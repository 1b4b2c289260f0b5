"""An onnxruntime session for one model version. Knows arrays and providers; knows nothing of HTTP.

onnxruntime falls back from CUDA to CPU silently (a log line at most, also with `onnxruntime-gpu` on a machine
without CUDA), so the provider actually active is read back from the session and reported, never assumed.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelrepo.manifest import Manifest
from service.concurrency import offload

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def requested_providers(preference: str) -> list[str]:
    if preference == "cpu":
        return [CPU]
    if preference == "cuda" or CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def install_problems(distributions: dict[str, str | None] | None = None) -> list[str]:
    """`onnxruntime` and `onnxruntime-gpu` both install the module `onnxruntime`; with both present the later
    install silently overwrote the other and `pip check` does not notice. `distributions` maps distribution name
    to installed version (None: absent) and defaults to what is installed."""
    if distributions is None:
        distributions = {name: _installed(name) for name in ("onnxruntime", "onnxruntime-gpu")}
    present = {name: version for name, version in distributions.items() if version}
    if len(present) > 1:
        listed = ", ".join(f"{n}=={v}" for n, v in sorted(present.items()))
        return [
            f"both {listed} are installed: they share the module `onnxruntime` and one silently overwrote the "
            "other; `pip uninstall -y onnxruntime onnxruntime-gpu`, then install one of them"
        ]
    if not present:
        return ["neither onnxruntime nor onnxruntime-gpu is installed as a distribution"]
    (name, version), module_version = next(iter(present.items())), ort.__version__
    if version.split("+")[0] != module_version.split("+")[0]:
        return [f"{name}=={version} is installed but the module reports {module_version}: reinstall {name}"]
    return []


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class ModelRuntime:
    """One `InferenceSession` with explicit thread counts; `run` is safe to call from several threads."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        preference: str,
        intra_op_threads: int,
        inline_below: float = 0.0,
        alone: Callable[[int], bool] = lambda requests: False,
    ) -> None:
        self.manifest = manifest
        self.inline_below = inline_below  # seconds: shorter calls may run inline (see `_call`)
        self.alone = alone  # whether a run of so many requests is all the worker has to do (see `_call`)
        self.cell_seconds = float("inf")  # one sequence's cost per timestep, measured by `warmup`
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Errors only: a stateful model.onnx keeps h0/c0 as inputs backed by zero initializers (optional state), and
        # onnxruntime warns about each at every load. The provider actually used is checked below, not logged.
        options.log_severity_level = 3
        self.requested = requested_providers(preference)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.session = offload(
                functools.partial(
                    ort.InferenceSession, str(path / manifest.onnx_file), options, providers=self.requested
                )
            )
        for w in caught:
            log.warning("onnxruntime: %s", w.message)
        self.provider = self.session.get_providers()[0]
        self.fell_back = self.requested[0] != self.provider
        if self.fell_back:
            log.warning(
                "%s/%d: asked for %s, onnxruntime runs it on %s",
                manifest.name,
                manifest.version,
                self.requested[0],
                self.provider,
            )
        self.output_names = [o.name for o in self.session.get_outputs()]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        # State inputs the client did not send start at zero: [layers * directions, B, hidden].
        self._state_defaults = {
            t.name: t for t in manifest.inputs if t.name in graph_inputs and t.name not in ("features", "lengths")
        }

    def run(self, inputs: dict[str, np.ndarray], requests: int = 1) -> dict[str, np.ndarray]:
        """`features` [B, T, F] float32 and `lengths` [B] int64 at least; missing states start at zero. `requests`:
        how many requests the inputs hold (the batcher merges several)."""
        batch = inputs["features"].shape[0]
        feeds = dict(inputs)
        for name, spec in self._state_defaults.items():
            if name not in feeds:
                shape = [batch if d == "batch" else d for d in spec.shape]
                feeds[name] = np.zeros(shape, dtype=np.float32)
        return dict(zip(self.output_names, self._call(feeds, requests), strict=True))

    def _call(self, feeds: dict[str, np.ndarray], requests: int) -> list[np.ndarray]:
        """Under gevent, a call handed to the thread pool (`offload`) lets the worker keep reading requests while the
        model runs (the batcher then merges them into the next run) and gives every connection its turn. The hand-off
        costs CPU and latency of its own, though, so a call expected to take less than `inline_below` runs in the
        calling greenlet when the worker has no other client connection (`alone`): nobody waits behind it. A/B with
        `python -m bench.ab`, one client, against the thread pool: inline cut the CPU per request on h32 1x50 by 19 %
        (769 to 623 us; p50 0.80 to 0.65 ms) and on h128 1x50 by 21 % (1,500 to 1,191 us; p50 1.51 to 1.16 ms); at 8
        and 32 connections (with gevent's ThreadPool then) nothing changed. Inline regardless of load was tried and is
        not done: at 8 connections it saved 2-16 % of CPU but made p99 up to 1.6x worse, and at 32 it cost 13 % of
        throughput, because requests are not read while the model runs, so fewer of them merge."""
        features = feeds["features"]
        expected = features.shape[0] * features.shape[1] * self.cell_seconds
        if expected < self.inline_below and self.alone(requests):
            return self.session.run(self.output_names, feeds)  # the worker yields after each answer
        return offload(self.session.run, self.output_names, feeds)

    def state_wiring_error(self, steps: int = 12, split: int = 5) -> float:
        """Triton's guard that is missing (h and c swapped, a state output fed to the wrong input): a random
        sequence run whole and in two chunks through the state inputs must give the same answer. Returns the
        largest difference of probabilities and final states; 0.0 for a model without state inputs."""
        names = [t.name for t in self.manifest.state_inputs]
        if not names:
            return 0.0
        carried = ["hn", "cn"][: len(names)]
        rng = np.random.default_rng(7)
        mean = np.asarray(self.manifest.normalization.mean, dtype=np.float32)
        std = np.asarray(self.manifest.normalization.std, dtype=np.float32)
        features = (mean + 2 * std * rng.standard_normal((1, steps, self.manifest.input_dim))).astype(np.float32)
        whole = self.run({"features": features, "lengths": np.array([steps])})
        first = self.run({"features": features[:, :split], "lengths": np.array([split])})
        rest = {"features": features[:, split:], "lengths": np.array([steps - split])}
        second = self.run(rest | {n: first[c] for n, c in zip(names, carried, strict=True)})
        if self.manifest.per_timestep:
            chunked = np.concatenate([first["probabilities"], second["probabilities"]], axis=1)
        else:
            chunked = second["probabilities"]
        diffs = [np.abs(whole["probabilities"] - chunked).max()]
        diffs += [np.abs(whole[c] - second[c]).max() for c in carried]
        return float(max(diffs))

    def warmup(self, timesteps: int) -> None:
        """Run the shapes that first requests will bring, so the first user does not pay for allocation."""
        rng = np.random.default_rng(0)
        for batch, steps in ((1, 1), (1, timesteps), (8, timesteps)):
            features = rng.standard_normal((batch, steps, self.manifest.input_dim)).astype(np.float32)
            self.run({"features": features, "lengths": np.full(batch, steps, dtype=np.int64)})
        self.cell_seconds = self._measure_cell(rng, timesteps)

    def _measure_cell(self, rng: np.random.Generator, timesteps: int, repeats: int = 5) -> float:
        """The fastest of a few single-sequence runs, per timestep: what `_call` expects a call to cost."""
        features = rng.standard_normal((1, timesteps, self.manifest.input_dim)).astype(np.float32)
        inputs = {"features": features, "lengths": np.array([timesteps])}
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            self.session.run(self.output_names, inputs)
            best = min(best, time.perf_counter() - started)
        return best / timesteps
