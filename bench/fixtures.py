"""The benchmark's models and payloads, made with the project's own code and cached under `bench/results/`.

Two LSTM per-timestep classifiers on 6 features (`h32`: hidden 32, 1 layer; `h128`: hidden 128, 2 layers) are
trained for 2 epochs on a synthetic stream by `python -m models.train` and published by `python -m export`:
accuracy is irrelevant here, the shapes and the code path are what count. A rerun finds them and skips this.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.fixtures")

FEATURES = 6


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    layers: int


MODELS = (ModelSpec("h32", 32, 1), ModelSpec("h128", 128, 2))


@dataclass(frozen=True)
class ExportedModel:
    name: str
    onnx: Path
    checkpoint: Path
    manifest: dict

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def state_inputs(self) -> list[dict]:
        """The initial-state inputs (`h0`, `c0`) of the exported graph, fed with zeros."""
        return [s for s in self.manifest["onnx"]["inputs"] if s["name"] not in ("features", "lengths")]


def synthetic_stream(path: Path, steps: int = 20_000, seed: int = 0) -> Path:
    """A [T, 6] stream whose label (two classes) follows the sign of a smoothed first feature."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(steps, FEATURES)).astype(np.float32)
    smooth = np.convolve(features[:, 0], np.ones(10) / 10, mode="same")
    labels = np.where(smooth > 0, "up", "down")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=features, labels=labels)
    return path


def _latest_version(model_dir: Path) -> Path | None:
    versions = sorted((p for p in model_dir.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    for version in reversed(versions):
        if (version / "manifest.json").is_file():
            return version
    return None


def _run(cmd: list[str], log_file: Path) -> None:
    log.info("$ %s", " ".join(cmd))
    with log_file.open("a") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({result.returncode}); see {log_file}")


def build_model(spec: ModelSpec, results: Path) -> ExportedModel:
    """Train and export one model unless both its run and its exported version are already there (the naive
    server loads the checkpoint, the others the ONNX file: they must come from the same run)."""
    repository, run_dir = results / "model_repository", results / "runs" / spec.name
    version = _latest_version(repository / spec.name)
    if version is None or not (run_dir / "checkpoint.pt").is_file():
        shutil.rmtree(repository / spec.name, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        data = synthetic_stream(results / "synthetic.npz")
        build_log = results / f"build-{spec.name}.log"
        build_log.unlink(missing_ok=True)
        train = [sys.executable, "-m", "models.train", "--data", str(data), "--seq-len", "50", "--cell", "lstm"]
        train += ["--hidden", str(spec.hidden), "--layers", str(spec.layers), "--head", "per_timestep"]
        train += ["--epochs", "2", "--no-progress", "--out", str(run_dir)]
        _run(train, build_log)
        _run(
            [sys.executable, "-m", "export", str(run_dir), "--repository", str(repository), "--name", spec.name],
            build_log,
        )
        version = _latest_version(repository / spec.name)
        assert version is not None, f"export wrote no version of {spec.name}"
    manifest = json.loads((version / "manifest.json").read_text())
    return ExportedModel(spec.name, version / manifest["onnx"]["file"], run_dir / "checkpoint.pt", manifest)


def build_models(results: Path) -> dict[str, ExportedModel]:
    return {spec.name: build_model(spec, results) for spec in MODELS}
