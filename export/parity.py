"""Eager PyTorch vs the TorchScript file vs onnxruntime on the files about to be published."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from export.artifacts import InferenceGraph, io_specs, state_names

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
    inputs, outputs = io_specs(graph.model.config)
    names = [s.name for s in outputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, TorchScript is asked for
        scripted = torch.jit.load(str(torchscript))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    worst = {b: dict.fromkeys(names, 0.0) for b in ("torchscript", "onnxruntime")}
    described = []
    for batch in parity_batches(graph, seq_len):
        with torch.no_grad():
            reference = [t.numpy() for t in graph(*batch)]
            from_script = [t.numpy() for t in scripted(*batch)]
        from_ort = session.run(names, {spec.name: t.numpy() for spec, t in zip(inputs, batch, strict=True)})
        mask = _valid(batch[1], reference[0].shape)
        for backend, got in (("torchscript", from_script), ("onnxruntime", from_ort)):
            for name, ref, out in zip(names, reference, got, strict=True):
                diff = np.abs(ref - out)
                if name in ("probabilities", "logits"):
                    diff = diff[mask]
                worst[backend][name] = max(worst[backend][name], float(diff.max()))
        described.append({"batch": int(batch[0].shape[0]), "lengths": _describe(batch[1])})
    report = ParityReport(tolerance, described, worst)
    if report.worst_probability > tolerance:
        raise ParityError(
            f"parity failed: max |Δprobability| = {report.worst_probability:.3e} > tolerance {tolerance:.0e} "
            f"(torchscript {worst['torchscript']['probabilities']:.3e}, "
            f"onnxruntime {worst['onnxruntime']['probabilities']:.3e}); nothing was published"
        )
    return report


def _valid(lengths: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """Timesteps that exist (per-timestep outputs [B, T, C]); every row for per-sequence outputs [B, C]."""
    if len(shape) == 2:
        return np.ones(shape, dtype=bool)
    steps = np.arange(shape[1])[None, :] < lengths.numpy()[:, None]
    return np.broadcast_to(steps[:, :, None], shape)


def _describe(lengths: Tensor) -> dict[str, int]:
    return {"min": int(lengths.min()), "max": int(lengths.max())}
