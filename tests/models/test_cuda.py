"""On a CUDA machine: training with every tensor on the model's device, cuDNN's packed sequences padding-invariant
and close to the CPU, streaming evaluation as on the CPU, and a checkpoint written from the GPU that loads on the
CPU. Skipped without a GPU (CI)."""

from __future__ import annotations

import itertools

import pytest
import torch

from models import checkpoint, trainer
from models.model import ModelConfig, SequenceClassifier
from tests.conftest import make_stream, train, write_csv_stream

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CELLS_AND_DIRECTIONS = list(itertools.product(("rnn", "gru", "lstm"), (False, True)))


def test_training_runs_on_the_gpu_and_the_checkpoint_loads_on_the_cpu(tmp_path):
    features, labels = make_stream(1500, seed=41)
    path = write_csv_stream(tmp_path / "s.csv", features, labels)
    metrics = train(path, tmp_path / "run", device="cuda", epochs=10, head="last", bidirectional=True, layers=2)
    assert metrics["accuracy"] >= 0.8
    ckpt = checkpoint.load(tmp_path / "run" / checkpoint.CHECKPOINT_FILE)
    assert {t.device.type for t in ckpt.model.state_dict().values()} == {"cpu"}
    on_gpu = checkpoint.load(tmp_path / "run" / checkpoint.CHECKPOINT_FILE, device="cuda")
    assert {t.device.type for t in on_gpu.model.state_dict().values()} == {"cuda"}


def _padded(lengths: list[int], device: str) -> torch.Tensor:
    features = torch.randn(len(lengths), max(lengths), 6)
    for i, n in enumerate(lengths):
        features[i, n:] = 100.0  # garbage in the padding
    return features.to(device)


@pytest.mark.parametrize(("cell", "bidirectional"), CELLS_AND_DIRECTIONS)
def test_gpu_sequence_alone_equals_sequence_padded(cell, bidirectional):
    torch.manual_seed(0)
    config = ModelConfig(input_dim=6, num_classes=3, cell=cell, num_layers=2, bidirectional=bidirectional)
    model = SequenceClassifier(config).cuda().eval()
    lengths = [9, 3, 6, 1]
    features = _padded(lengths, "cuda")
    with torch.no_grad():
        batched = model(features, torch.tensor(lengths, device="cuda"))
        for i, n in enumerate(lengths):
            alone = model(features[i : i + 1, :n], torch.tensor([n], device="cuda"))
            # cuDNN runs TF32 by default: batches of different sizes differ by ~1e-4 (measured on an H200);
            # padding that leaked into the recurrence would move outputs by O(1).
            torch.testing.assert_close(batched[i, :n], alone[0], rtol=0, atol=1e-3)


@pytest.mark.parametrize(("cell", "bidirectional"), CELLS_AND_DIRECTIONS)
def test_gpu_matches_cpu_from_an_initial_state(cell, bidirectional):
    torch.manual_seed(0)
    config = ModelConfig(input_dim=6, num_classes=3, cell=cell, num_layers=2, bidirectional=bidirectional)
    cpu_model = SequenceClassifier(config).eval()
    cpu_model.set_normalization(torch.randn(6), torch.rand(6) + 0.5)
    gpu_model = SequenceClassifier(config).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    lengths = [9, 3, 6, 1]
    features = _padded(lengths, "cpu")
    h = torch.randn(config.num_layers * config.num_directions, 4, config.hidden_size)
    initial = (h, torch.randn_like(h)) if cell == "lstm" else h
    on_device = tuple(s.cuda() for s in initial) if cell == "lstm" else initial.cuda()
    with torch.no_grad():
        want, _ = cpu_model.forward_with_state(features, torch.tensor(lengths), initial)
        got, _ = gpu_model.forward_with_state(features.cuda(), torch.tensor(lengths, device="cuda"), on_device)
    valid = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    torch.testing.assert_close(got.cpu()[valid], want[valid], rtol=0, atol=2e-3)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_streaming_evaluation_on_the_gpu_matches_the_cpu(cell):
    """The carried state stays on the model's device, and streams of unequal lengths keep their own state."""
    torch.manual_seed(0)
    config = ModelConfig(input_dim=6, num_classes=3, cell=cell, num_layers=2, hidden_size=16)
    model = SequenceClassifier(config)
    streams = []
    for length in (23, 7, 40, 16):
        x, y = torch.randn(length, 6), torch.randint(0, 3, (length,))
        streams.append([(x[s : s + 5], y[s : s + 5]) for s in range(0, length, 5)])
    on_cpu = trainer.evaluate_streaming(model, streams, torch.device("cpu"))
    on_gpu = trainer.evaluate_streaming(model.cuda(), streams, torch.device("cuda"))
    assert on_gpu.loss == pytest.approx(on_cpu.loss, abs=1e-4)
    assert (on_gpu.y_true == on_cpu.y_true).all()
    assert (on_gpu.y_pred != on_cpu.y_pred).mean() < 0.02
