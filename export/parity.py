"""Eager PyTorch vs the TorchScript file vs onnxruntime on the files about to be published.

Every parity batch runs through both files with its random initial state fed by name (report keys `torchscript`,
`onnxruntime`); for models with a state it runs again with only `features` and `lengths` fed, against eager PyTorch
from a zero state (`torchscript_without_state`, `onnxruntime_without_state`), so a broken default state is never
published. The check fails on the worst probability difference over all of them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from export.artifacts import InferenceGraph, io_specs, state_names
from modelrepo.manifest import ModelConfig

DEFAULT_TOLERANCE = 1e-5
BATCH_SIZES = (1, 3, 64)


class ParityError(RuntimeError):
    pass


@dataclass
class ParityReport:
    tolerance: float
    batches: list[dict[str, object]]
    max_abs_diff: dict[str, dict[str, float]]  # backend -> output -> max |diff| over every batch

    @property
    def worst_probability(self) -> float:
        return max(diffs["probabilities"] for diffs in self.max_abs_diff.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "tolerance": self.tolerance,
            "passed": self.worst_probability <= self.tolerance,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_diff_probability": self.worst_probability,
            "batches": self.batches,
        }


def parity_batches(graph: InferenceGraph, seq_len: int, seed: int = 0) -> list[tuple[Tensor, ...]]:
    """Batch sizes 1, 3 and 64 with lengths from 1 to 3 x the training length, mixed within each batch; features
    drawn around the training statistics; a random initial state for models that take one."""
    config = graph.model.config
    longest = 3 * seq_len
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size in BATCH_SIZES:
        for lengths in _lengths_for(size, longest, gen):
            noise = torch.randn(size, int(lengths.max()), config.input_dim, generator=gen)
            features = graph.model.feature_mean + noise * graph.model.feature_std * 1.5
            layers_dirs, hidden = config.state_shape
            state = [torch.randn(layers_dirs, size, hidden, generator=gen) * 0.5 for _ in state_names(config)[0]]
            batches.append((features.float(), lengths, *state))
    return batches


def _lengths_for(size: int, longest: int, gen: torch.Generator) -> list[Tensor]:
    if size == 1:
        return [torch.tensor([1]), torch.tensor([longest])]
    mixed = torch.randint(1, longest + 1, (size,), generator=gen)
    mixed[0], mixed[-1] = longest, 1
    return [mixed]


def check(graph: InferenceGraph, torchscript: Path, onnx_path: Path, seq_len: int, tolerance: float) -> ParityReport:
    files = _Files(torchscript, onnx_path, graph.model.config)
    worst: dict[str, dict[str, float]] = {}
    described = []
    for features, lengths, *state in parity_batches(graph, seq_len):
        for suffix, initial, fed in _cases(files.state_in, state):
            with torch.no_grad():
                reference = [t.numpy() for t in graph(features, lengths, *initial)]
            for backend in ("torchscript", "onnxruntime"):
                got = files.run(backend, features, lengths, fed)
                _record(worst.setdefault(backend + suffix, dict.fromkeys(files.outputs, 0.0)), reference, got, lengths)
        described.append({"batch": int(features.shape[0]), "lengths": _describe(lengths)})
    report = ParityReport(tolerance, described, worst)
    if report.worst_probability > tolerance:
        by_backend = ", ".join(f"{backend} {diffs['probabilities']:.3e}" for backend, diffs in worst.items())
        raise ParityError(
            f"parity failed: max |Δprobability| = {report.worst_probability:.3e} > tolerance {tolerance:.0e} "
            f"({by_backend}); nothing was published"
        )
    return report


def _cases(state_in: list[str], state: list[Tensor]) -> list[tuple[str, list[Tensor], dict[str, Tensor]]]:
    """(report key suffix, eager initial state, state fed to the files): the random state fed by name, then, for
    models with a state, nothing fed against eager from zeros."""
    cases = [("", state, dict(zip(state_in, state, strict=True)))]
    if state_in:
        cases.append(("_without_state", [torch.zeros_like(s) for s in state], {}))
    return cases


class _Files:
    """The TorchScript and ONNX files about to be published, called as a user would: state by name or not at all."""

    def __init__(self, torchscript: Path, onnx_path: Path, config: ModelConfig) -> None:
        self.outputs = [s.name for s in io_specs(config)[1]]
        self.state_in = state_names(config)[0]
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # torch.jit.load is deprecated, TorchScript is asked for
            self.torchscript = torch.jit.load(str(torchscript))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        # As the service runs it: every optimisation on, so a default state folded into a constant would show here.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # not the expected "initializer h0 appears in graph inputs" warning
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def run(self, backend: str, features: Tensor, lengths: Tensor, fed: dict[str, Tensor]) -> list[np.ndarray]:
        """One backend's outputs; a file that cannot even be called so fails the check, saying what was fed."""
        try:
            if backend == "torchscript":
                with torch.no_grad():
                    return [t.numpy() for t in self.torchscript(features, lengths, **fed)]
            feeds = {"features": features.numpy(), "lengths": lengths.numpy()} | {k: v.numpy() for k, v in fed.items()}
            return self.session.run(self.outputs, feeds)
        except (RuntimeError, ValueError) as error:
            how = f"with {', '.join(fed)} fed by name" if fed else "with only features and lengths"
            message = f"parity failed: {backend} cannot be called {how}: {error}; nothing was published"
            raise ParityError(message) from error


def _record(worst: dict[str, float], reference: list[np.ndarray], got: list[np.ndarray], lengths: Tensor) -> None:
    """Raise each output's max |diff| in `worst` (outputs in `worst`'s order; padded timesteps left out)."""
    mask = _valid(lengths, reference[0].shape)
    for name, ref, out in zip(worst, reference, got, strict=True):
        diff = np.abs(ref - out)
        if name in ("probabilities", "logits"):
            diff = diff[mask]
        worst[name] = max(worst[name], float(diff.max()))


def _valid(lengths: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Timesteps that exist (per-timestep outputs [B, T, C]); every row for per-sequence outputs [B, C]."""
    if len(shape) == 2:
        return np.ones(shape, dtype=bool)
    steps = np.arange(shape[1])[None, :] < lengths.numpy()[:, None]
    return np.broadcast_to(steps[:, :, None], shape)


def _describe(lengths: Tensor) -> dict[str, int]:
    return {"min": int(lengths.min()), "max": int(lengths.max())}
