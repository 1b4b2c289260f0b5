"""A real gunicorn serving the shared models plus `motions` (an untrained LSTM with the BasicMotions features and
classes, so the page offers its bundled recordings, and a metrics.json with a confusion matrix and class report),
and one chromium for the module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.browser.chromium import chromium
from tests.service.conftest import Server, start_server

MOTIONS_FEATURES = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
MOTIONS_CLASSES = ["Badminton", "Running", "Standing", "Walking"]
MOTIONS_CONFUSION = [[20, 1, 0, 2], [0, 25, 0, 1], [0, 0, 30, 0], [3, 0, 1, 18]]
EXAMPLES = Path(__file__).resolve().parents[2] / "service" / "static" / "examples"


def write_motions_run(run_dir: Path) -> Path:
    """A checkpoint of an untrained 1-layer LSTM (12 units) normalised with the bundled recordings' statistics."""
    import torch

    from models import checkpoint
    from models.evaluate import classification_metrics
    from models.model import ModelConfig, SequenceClassifier

    frames = [np.loadtxt(p, delimiter=",", skiprows=1, usecols=range(1, 7)) for p in sorted(EXAMPLES.glob("*.csv"))]
    data = np.concatenate(frames)
    torch.manual_seed(0)
    model = SequenceClassifier(ModelConfig(input_dim=6, num_classes=4, hidden_size=12))
    model.set_normalization(torch.tensor(data.mean(0)).float(), torch.tensor(data.std(0)).float())
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.Checkpoint(model.eval(), MOTIONS_FEATURES, MOTIONS_CLASSES, 100, {"seed": 0})
    checkpoint.save(run_dir / checkpoint.CHECKPOINT_FILE, ckpt)
    truth = np.repeat(np.arange(4), [sum(row) for row in MOTIONS_CONFUSION])
    predicted = np.concatenate([np.repeat(np.arange(4), row) for row in MOTIONS_CONFUSION])
    metrics = classification_metrics(truth, predicted, MOTIONS_CLASSES) | {"split": "test", "unit": "timestep"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture(scope="module")
def repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.pipeline import export_run

    root = tmp_path_factory.mktemp("browser")
    shutil.copytree(model_repository, root / "repository")
    export_run(write_motions_run(root / "motions"), root / "repository", "motions")
    return root / "repository"


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(repository, tmp_path_factory.mktemp("server") / "gunicorn.log")
    yield s
    assert s.stop() == 0, s.logs()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


class Problems(list):
    """Console errors, uncaught exceptions and failed requests of one page."""

    def __init__(self, page: Page) -> None:
        super().__init__()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda request: self.append(f"request failed: {request.url} {request.failure}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.append(f"console: {message.text} ({message.location.get('url')})")


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=server.url)
    page = context.new_page()
    page.problems = Problems(page)  # type: ignore[attr-defined]
    yield page
    context.close()
