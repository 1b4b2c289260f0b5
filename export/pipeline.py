"""From a run folder to a published model version: the artifacts, their parity check and the manifest, written
through the repository's atomic publish. `python -m export` is the command line around `export_run`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from importlib import metadata
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from export import artifacts, parity
from modelrepo import layout
from modelrepo.manifest import Manifest, Normalization
from models import checkpoint
from models.model import parameter_count_formula

log = logging.getLogger(__name__)
# The training metrics a manifest carries (shown by the service's model listing and its home page).
MANIFEST_METRICS = (
    "accuracy",
    "streaming_accuracy",
    "streaming_unavailable",
    "macro_f1",
    "support",
    "split",
    "unit",
    "per_class",
    "confusion_matrix",
)


def build_manifest(ckpt: checkpoint.Checkpoint, name: str, opset: int, run_dir: Path) -> Manifest:
    """Everything but the version and the file checksums, which the publish fills in."""
    config = ckpt.model.config
    inputs, outputs = artifacts.io_specs(config)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Manifest(
        name=name,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        model=config,
        parameter_count=ckpt.model.parameter_count(),
        feature_names=tuple(ckpt.feature_names),
        class_names=tuple(ckpt.class_names),
        normalization=Normalization(tuple(ckpt.model.feature_mean.tolist()), tuple(ckpt.model.feature_std.tolist())),
        training={"seq_len": ckpt.seq_len, **ckpt.extra, "run_dir": str(run_dir)},
        metrics={k: metrics[k] for k in MANIFEST_METRICS if k in metrics},
        onnx_file=artifacts.ONNX_FILE,
        opset=opset,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        torchscript_file=artifacts.TORCHSCRIPT_FILE,
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "seqserve": metadata.version("seqserve"),
        },
    )


def export_run(
    run_dir: Path,
    repository_dir: Path,
    name: str,
    opset: int = artifacts.DEFAULT_OPSET,
    tolerance: float = parity.DEFAULT_TOLERANCE,
) -> tuple[int, Path]:
    ckpt = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    count, expected = ckpt.model.parameter_count(), parameter_count_formula(ckpt.model.config)
    if count != expected:
        raise ValueError(f"{run_dir}: the model has {count} parameters, its config's closed form says {expected}")
    graph = artifacts.InferenceGraph(ckpt.model)

    def build(folder: Path) -> Manifest:
        artifacts.write_torchscript(graph, folder / artifacts.TORCHSCRIPT_FILE)
        artifacts.write_onnx(graph, folder / artifacts.ONNX_FILE, opset)
        report = parity.check(
            graph, folder / artifacts.TORCHSCRIPT_FILE, folder / artifacts.ONNX_FILE, ckpt.seq_len, tolerance
        )
        log.info("parity: max |Δprobability| %.2e (tolerance %.0e)", report.worst_probability, tolerance)
        return dataclasses.replace(build_manifest(ckpt, name, opset, run_dir), parity=report.to_dict())

    return layout.publish(repository_dir, name, build)
