"""`python -m export`: the README's train + export flow on a tutorial `.mat`, concurrent exports, CLI errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys

import pytest

from export.__main__ import main
from modelrepo import layout
from modelrepo.manifest import sha256
from tests.conftest import REPO_ROOT, make_stream, train, write_mat
from tests.export.conftest import write_run


def export_command(run_dir, repo, name, *extra) -> list[str]:
    return [sys.executable, "-m", "export", str(run_dir), "--repository", str(repo), "--name", name, *extra]


def run_quietly(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory):
    """The classic tutorial's model: a .mat `feature` matrix of [index, f1..f6, label], LSTM 6 -> 32 -> 2."""
    root = tmp_path_factory.mktemp("tutorial")
    features, labels = make_stream(600, classes=[1, 2], seed=31)
    path = write_mat(root / "feature.mat", features, labels)
    metrics = train(path, root / "run", hidden=32, epochs=2)
    assert metrics["parameter_count"] == 5186
    return root / "run"


def test_cli_exports_the_tutorial_model(tutorial_run, tmp_path):
    repo = tmp_path / "model_repository"
    process = run_quietly(export_command(tutorial_run, repo, "tutorial"))
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert "published tutorial version 1" in stderr
    folder = repo / "tutorial" / "1"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["parameter_count"] == 5186
    assert (manifest["model"]["cell"], manifest["model"]["hidden_size"]) == ("lstm", 32)
    assert manifest["class_names"] == ["1", "2"]
    assert manifest["feature_names"] == ["f1", "f2", "f3", "f4", "f5", "f6"]
    metrics = json.loads((tutorial_run / "metrics.json").read_text())
    assert manifest["metrics"]["accuracy"] == metrics["accuracy"]
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]


def test_two_exports_at_once_get_two_versions(tmp_path):
    run_dir = write_run(tmp_path / "run", seq_len=4, cell="gru", hidden_size=4)
    repo = tmp_path / "model_repository"
    processes = [run_quietly(export_command(run_dir, repo, "m")) for _ in range(2)]
    outcomes = [(p.communicate(timeout=180)[1], p.returncode) for p in processes]
    for stderr, code in outcomes:
        assert code == 0, stderr
    assert layout.versions(repo / "m") == [1, 2]
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]  # no temporary folder left
    manifests = [json.loads((repo / "m" / v / "manifest.json").read_text()) for v in ("1", "2")]
    assert [m["version"] for m in manifests] == [1, 2]
    assert sorted(int(s.split("published m version ")[1].split()[0]) for s, _ in outcomes) == [1, 2]
    for version, manifest in zip(("1", "2"), manifests, strict=True):
        for name, entry in manifest["files"].items():
            assert sha256(repo / "m" / version / name) == entry["sha256"]


def test_cli_parity_failure_exits_1_and_publishes_nothing(tmp_path, caplog):
    run_dir = write_run(tmp_path / "run", seq_len=4, cell="lstm", hidden_size=4)
    with caplog.at_level(logging.ERROR, logger="export"):
        code = main([str(run_dir), "--repository", str(tmp_path / "r"), "--name", "m", "--tolerance", "0"])
    assert code == 1
    assert "parity failed: max |Δprobability| =" in caplog.text
    assert list((tmp_path / "r" / "m").iterdir()) == []


def test_cli_refuses_a_folder_without_checkpoint(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="export"):
        code = main([str(tmp_path), "--repository", str(tmp_path / "r"), "--name", "m"])
    assert code == 2
    assert f"{tmp_path}: no checkpoint.pt" in caplog.text
    assert not (tmp_path / "r").exists()


def test_cli_refuses_a_bad_name(tmp_path, caplog):
    run_dir = write_run(tmp_path / "run", seq_len=4, cell="rnn", hidden_size=4)
    with caplog.at_level(logging.ERROR, logger="export"):
        code = main([str(run_dir), "--repository", str(tmp_path / "r"), "--name", "../up"])
    assert code == 1
    assert "model name '../up'" in caplog.text
    assert not (tmp_path / "up").exists()
    assert not (tmp_path / "r").exists()


def test_cli_exporter_failure_exits_1_with_a_message(tmp_path, caplog):
    run_dir = write_run(tmp_path / "run", seq_len=4, cell="lstm", hidden_size=4)
    with caplog.at_level(logging.ERROR, logger="export"):
        code = main([str(run_dir), "--repository", str(tmp_path / "r"), "--name", "m", "--opset", "99"])
    assert code == 1
    assert "export failed, nothing was published" in caplog.text
    assert list((tmp_path / "r" / "m").iterdir()) == []
