"""Judging a trained model on its held-out split: metrics.json and PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from models.trainer import History


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    labels = list(range(len(class_names)))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "support": len(y_true),
        "per_class": classification_report(
            y_true, y_pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": class_names,
    }


def plot_curves(history: History, path: Path) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = np.arange(1, len(history.train_loss) + 1)
    for ax, key, title in ((loss_ax, "loss", "cross-entropy"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, getattr(history, f"train_{key}"), label="train")
        ax.plot(epochs, getattr(history, f"val_{key}"), label="validation")
        if history.best_epoch >= 0:
            ax.axvline(history.best_epoch + 1, color="grey", linestyle=":", label="best epoch")
        ax.set(xlabel="epoch", title=title)
        ax.legend()
    fig.savefig(path, dpi=100)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> None:
    values = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="test split")
    threshold = values.max() / 2 if values.size else 0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > threshold else "black")
    fig.savefig(path, dpi=100)
