"""Shared test data and models, built by the real training and export code.

Helpers (plain functions, importable as `from tests.conftest import ...`) write small synthetic, separable data
files in every format the loaders read. Session fixtures train and export real tiny models once per test run:

- `trained_runs`: name -> run folder (checkpoint.pt, metrics.json, plots), loadable with `models.checkpoint.load`;
- `model_repository`: a repository holding `lstm_step` (unidirectional LSTM, per-timestep head) and `gru_last`
  (bidirectional 2-layer GRU, `last` head), each at version 1, both with 6 features `FEATURE_NAMES`, 3 classes
  `CLASS_NAMES`, hidden size 16 and training length `SEQ_LEN`.

torch, onnx and our packages are imported inside the functions, so collecting tests that do not need them (the
service's) never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURE_NAMES = ("ax", "ay", "az", "gx", "gy", "gz")
CLASS_NAMES = ("idle", "walk", "run")
SEQ_LEN = 20
HIDDEN = 16
# name -> RunConfig settings of the shared models (see the module docstring for the contract).
SHARED_MODELS: dict[str, dict[str, Any]] = {
    "lstm_step": {"cell": "lstm", "layers": 1, "bidirectional": False, "head": "per_timestep"},
    "gru_last": {"cell": "gru", "layers": 2, "bidirectional": True, "head": "last"},
}


def make_stream(
    steps: int,
    *,
    num_features: int = len(FEATURE_NAMES),
    classes: tuple[str, ...] | list[str] = CLASS_NAMES,
    seed: int = 0,
    shift: float = 4.0,
    segment: tuple[int, int] = (10, 30),
) -> tuple[np.ndarray, np.ndarray]:
    """A stream of `steps` timesteps made of segments of one class each (lengths drawn in `segment`).

    Class k lifts feature k (mod the feature count) by `shift` over unit Gaussian noise, so every timestep is
    separable on its own. Returns features [steps, F] float32 and labels [steps] of the given class values."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(steps, num_features))
    labels = np.empty(steps, dtype=np.asarray(classes).dtype)
    start = 0
    while start < steps:
        end = min(steps, start + int(rng.integers(segment[0], segment[1] + 1)))
        k = int(rng.integers(len(classes)))
        features[start:end, k % num_features] += shift
        labels[start:end] = classes[k]
        start = end
    return features.astype(np.float32), labels


def write_csv_stream(
    path: Path, features: np.ndarray, labels: np.ndarray, names: tuple[str, ...] = FEATURE_NAMES
) -> Path:
    """One long stream: a header of feature names and `label`, rows in time order."""
    import pandas as pd

    frame = pd.DataFrame(features, columns=list(names))
    frame["label"] = labels
    frame.to_csv(path, index=False)
    return path


def write_csv_sequences(
    path: Path,
    sequences: list[tuple[np.ndarray, np.ndarray]],
    names: tuple[str, ...] = FEATURE_NAMES,
    seed: int = 0,
) -> Path:
    """Columns `seq` (id), `t` (time), features, `label`; rows shuffled so the loader must re-order them."""
    import pandas as pd

    frames = []
    for i, (features, labels) in enumerate(sequences):
        frame = pd.DataFrame(features, columns=list(names))
        frame.insert(0, "t", np.arange(len(labels)))
        frame.insert(0, "seq", f"s{i}")
        frame["label"] = labels
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)
    table.to_csv(path, index=False)
    return path


def write_mat(
    path: Path, features: np.ndarray, labels: np.ndarray, variable: str = "feature", shuffle_seed: int | None = None
) -> Path:
    """The classic tutorial layout: a matrix of rows `[index, f1..fF, label]` with numeric labels."""
    from scipy.io import savemat

    index = np.arange(1, len(labels) + 1, dtype=np.float64)
    matrix = np.column_stack([index, features.astype(np.float64), labels.astype(np.float64)])
    if shuffle_seed is not None:
        matrix = matrix[np.random.default_rng(shuffle_seed).permutation(len(matrix))]
    savemat(path, {variable: matrix})
    return path


def write_npz(path: Path, features: np.ndarray, labels: np.ndarray, lengths: np.ndarray | None = None) -> Path:
    """features [N, T, F], labels [N, T] (strings, no objects), optional lengths [N]."""
    arrays = {"features": features, "labels": labels.astype(str)}
    if lengths is not None:
        arrays["lengths"] = np.asarray(lengths, dtype=np.int64)
    np.savez(path, **arrays)
    return path


def assert_png(path: Path) -> None:
    """A real PNG image (signature and a decodable picture of some size), not just a file with that name."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert height > 100
    assert width > 100


def train(data_path: Path, out: Path, **settings: Any) -> dict[str, Any]:
    """`models.train.run` with quick defaults for tests (small model, few epochs, no progress bar); `settings` are
    flat, named like the command line's flags with underscores (`hidden=`, `layers=`, `batch_size=`, `progress=`)."""
    from models.train import RunConfig, run

    defaults: dict[str, Any] = {
        "seq_len": SEQ_LEN,
        "hidden": HIDDEN,
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.01,
        "device": "cpu",
        "progress": False,
    }
    return run(RunConfig.from_settings({"data": str(data_path), "out": str(out), **defaults, **settings}))


@pytest.fixture(scope="session")
def separable_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,500-step CSV stream of the 6 features and 3 string classes the shared models are trained on."""
    features, labels = make_stream(1500, seed=1)
    return write_csv_stream(tmp_path_factory.mktemp("data") / "stream.csv", features, labels)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory, separable_csv: Path) -> dict[str, Path]:
    """name -> run folder of each model in SHARED_MODELS, trained for a few epochs (accuracy does not matter)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, settings in SHARED_MODELS.items():
        train(separable_csv, root / name, epochs=2, **settings)
        runs[name] = root / name
    return runs


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory, trained_runs: dict[str, Path]) -> Path:
    """A model repository with every shared model exported once (version 1) by `export.pipeline.export_run`."""
    from export.pipeline import export_run

    repository = tmp_path_factory.mktemp("model_repository")
    for name, run_dir in trained_runs.items():
        export_run(run_dir, repository, name)
    return repository
