"""Metrics on the held-out split and the PNG plots."""

from __future__ import annotations

import numpy as np
import pytest

from models import evaluate
from models.trainer import History
from tests.conftest import assert_png


def test_classification_metrics():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    metrics = evaluate.classification_metrics(y_true, y_pred, ["idle", "walk", "run"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"]["walk"]["recall"] == pytest.approx(1.0)
    assert metrics["per_class"]["walk"]["precision"] == pytest.approx(2 / 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (5 / 3), 2 * 0.5 / 1.5]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1))
    assert metrics["support"] == 6


def test_classes_absent_from_the_split_still_have_a_row():
    metrics = evaluate.classification_metrics(np.array([0, 0]), np.array([0, 0]), ["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert metrics["per_class"]["c"]["support"] == 0


def test_plots_are_png_files(tmp_path):
    history = History([1.0, 0.5, 0.4], [0.5, 0.8, 0.9], [1.1, 0.6, 0.7], [0.4, 0.7, 0.8], best_epoch=1)
    evaluate.plot_curves(history, tmp_path / "curves.png")
    evaluate.plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "confusion.png")
    assert_png(tmp_path / "curves.png")
    assert_png(tmp_path / "confusion.png")
