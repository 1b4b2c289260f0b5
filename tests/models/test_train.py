"""`models.train`: real short runs on synthetic data, the run folder, streaming accuracy, seeding, and the command line
whose flags, TOML keys and defaults come from the fields of RunConfig, ModelConfig and TrainConfig."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib
from dataclasses import fields
from typing import Literal, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import torch

from models import checkpoint, data
from models.model import ModelConfig
from models.train import FROM_DATA, HELP, SETTING_NAMES, RunConfig, build_parser, main, resolve_config, settings_table
from models.trainer import TrainConfig
from tests.conftest import REPO_ROOT, assert_png, make_stream, train, write_csv_sequences, write_csv_stream


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """A per-timestep LSTM trained for a few seconds on a separable 3-class stream."""
    root = tmp_path_factory.mktemp("learned")
    features, labels = make_stream(2400, seed=21)
    path = write_csv_stream(root / "stream.csv", features, labels)
    metrics = train(path, root / "run", epochs=20, seed=0)
    return root / "run", metrics


def test_a_short_run_learns_a_separable_task(learned_run):
    run_dir, metrics = learned_run
    assert metrics["accuracy"] >= 0.9
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["accuracy"] == metrics["accuracy"]
    assert on_disk["macro_f1"] >= 0.85
    assert on_disk["split"] == "test"
    assert on_disk["unit"] == "timestep"


def test_metrics_report_every_class_by_name(learned_run):
    run_dir, _ = learned_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["class_names"] == ["idle", "run", "walk"]
    for name in metrics["class_names"]:
        assert set(metrics["per_class"][name]) >= {"precision", "recall", "f1-score", "support"}
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3)
    assert matrix.sum() == metrics["support"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["accuracy"])


def test_run_folder_holds_checkpoint_and_plots(learned_run):
    run_dir, metrics = learned_run
    raw = torch.load(run_dir / checkpoint.CHECKPOINT_FILE, weights_only=True)
    assert raw["class_names"] == ["idle", "run", "walk"]
    assert raw["model_config"]["hidden_size"] == 16
    ckpt = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)
    assert ckpt.model.parameter_count() == metrics["parameter_count"]
    assert ckpt.feature_names == ["ax", "ay", "az", "gx", "gy", "gz"]
    assert ckpt.seq_len == 20
    assert_png(run_dir / "curves.png")
    assert_png(run_dir / "confusion_matrix.png")
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["train_loss"]) == metrics["epochs_run"]


def test_normalisation_is_fitted_on_the_training_split_only(tmp_path):
    """A drifting stream: statistics of all the data differ from those of the training blocks."""
    features, labels = make_stream(1200, seed=22)
    features += np.linspace(0, 10, len(features), dtype=np.float32)[:, None]
    path = write_csv_stream(tmp_path / "drift.csv", features, labels)
    train(path, tmp_path / "run", epochs=1, seed=5, split_block=100)

    loaded = data.load(path)
    split = data.split_blocks(loaded, 100, 0.15, 0.15, seed=5)
    train_mean, train_std = data.fit_normalization(split.train)
    model = checkpoint.load(tmp_path / "run" / checkpoint.CHECKPOINT_FILE).model
    torch.testing.assert_close(model.feature_mean, train_mean)
    torch.testing.assert_close(model.feature_std, train_std)
    all_mean = torch.from_numpy(features.mean(0))
    assert (model.feature_mean - all_mean).abs().max() > 0.1


def _state(run_dir):
    return torch.load(run_dir / checkpoint.CHECKPOINT_FILE, weights_only=True)["state_dict"]


def test_seed_makes_runs_identical(tmp_path):
    features, labels = make_stream(700, seed=23)
    path = write_csv_stream(tmp_path / "s.csv", features, labels)
    settings = {"epochs": 2, "hidden": 8, "seq_len": 10, "dropout": 0.2, "layers": 2, "cell": "gru"}
    first = train(path, tmp_path / "a", seed=11, **settings)
    second = train(path, tmp_path / "b", seed=11, **settings)
    third = train(path, tmp_path / "c", seed=12, **settings)
    a, b, c = _state(tmp_path / "a"), _state(tmp_path / "b"), _state(tmp_path / "c")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert first == second
    assert (tmp_path / "a" / "history.json").read_text() == (tmp_path / "b" / "history.json").read_text()
    assert any(not torch.equal(a[name], c[name]) for name in a if "rnn" in name)
    assert third["parameter_count"] == first["parameter_count"]


def test_last_head_trains_on_sequences_from_csv(tmp_path):
    sequences = [make_stream(30, seed=i, segment=(30, 30)) for i in range(40)]
    path = write_csv_sequences(tmp_path / "seqs.csv", sequences)
    metrics = train(
        path, tmp_path / "run", sequence_column="seq", time_column="t", head="last", epochs=1, split_block=30
    )
    assert metrics["unit"] == "sequence"
    # 30-step sequences cut in 20-step windows: two windows (20 + 10 steps) per held-out sequence
    assert metrics["support"] == 2 * round(0.15 * 40)


def test_cli_with_toml_config_overridden_by_flags(tmp_path):
    sequences = [make_stream(40, seed=i) for i in range(30)]
    path = write_csv_sequences(tmp_path / "seqs.csv", sequences)
    (tmp_path / "run.toml").write_text(
        f'data = "{path}"\nsequence_column = "seq"\ntime_column = "t"\nseq_len = 20\nsplit_block = 40\n'
        'cell = "gru"\nhidden = 8\nepochs = 1\nlr = 0.01\npatience = 50\nseed = 1\n'
    )
    out = tmp_path / "run"
    argv = ["--config", str(tmp_path / "run.toml"), "--epochs", "3", "--head", "per-timestep", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "models.train", *argv, "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["cell"], config["hidden"], config["head"]) == (3, "gru", 8, "per_timestep")
    assert len(json.loads((out / "history.json").read_text())["train_loss"]) == 3
    assert (out / "metrics.json").is_file()
    assert checkpoint.load(out / checkpoint.CHECKPOINT_FILE).model.config.cell == "gru"


def test_flags_override_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text('data = "x.csv"\nhidden = 64\nbidirectional = true\nhead = "last"\n')
    cfg = resolve_config(["--config", str(tmp_path / "c.toml"), "--hidden", "8", "--data", "y.mat"])
    assert (cfg.data, cfg.model["hidden_size"], cfg.model["bidirectional"], cfg.model["head"]) == (
        "y.mat",
        8,
        True,
        "last",
    )
    assert cfg.stride == cfg.seq_len
    assert cfg.split_block == 10 * cfg.seq_len
    assert cfg.columns().label == -1  # the .mat default: the last column


def test_unknown_config_setting_is_refused(tmp_path):
    (tmp_path / "c.toml").write_text('data = "x.csv"\nhiden = 8\n')
    with pytest.raises(SystemExit, match=r"unknown settings \['hiden'\]"):
        resolve_config(["--config", str(tmp_path / "c.toml")])


def test_data_is_required():
    with pytest.raises(SystemExit, match="--data PATH is required"):
        resolve_config(["--epochs", "1"])


def test_malformed_data_exits_with_the_message(tmp_path, caplog):
    features, labels = make_stream(50)
    features[10, 4] = np.nan
    path = write_csv_stream(tmp_path / "bad.csv", features, labels)
    with caplog.at_level(logging.ERROR, logger="models.train"):
        code = main(["--data", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert f"{path}: row 12, column 'gy'" in caplog.text
    assert not (tmp_path / "run" / checkpoint.CHECKPOINT_FILE).exists()


# ------------------------------------------------------------------------------------------ streaming accuracy

CONTEXT_RUN = {"seq_len": 8, "stride": 4, "split_block": 300, "epochs": 6, "seed": 0}


@pytest.fixture(scope="module")
def context_data(tmp_path_factory):
    """A stream where one timestep says little (a class lifts its feature by 1 over unit noise) and a class lasts
    100 to 200 steps: a window of 8 steps from a zero state has seen little, a stream has seen the segment so far."""
    features, labels = make_stream(2400, seed=8, shift=1.0, segment=(100, 200))
    return write_csv_stream(tmp_path_factory.mktemp("context") / "stream.csv", features, labels)


@pytest.fixture(scope="module", params=["per_timestep", "last"])
def context_run(request, context_data, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"context-{request.param}") / "run"
    train(context_data, out, head=request.param, **CONTEXT_RUN)
    return out, json.loads((out / "metrics.json").read_text())


def whole_block_predictions(run_dir, path) -> tuple[np.ndarray, np.ndarray]:
    """Each test block run whole from a zero state by the saved model, computed here independently of the
    streaming code: every timestep, or (`last` head) at each window's last step, from the block's start."""
    model = checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE).model
    loaded = data.load(path)
    blocks = data.split_blocks(loaded, CONTEXT_RUN["split_block"], 0.15, 0.15, CONTEXT_RUN["seed"]).test
    trues, preds = [], []
    with torch.no_grad():
        for block in blocks:
            x, y = torch.from_numpy(block.features)[None], loaded.encode(block.labels)
            if model.config.head == "per_timestep":
                trues.append(y)
                preds.append(model(x, torch.tensor([len(y)]))[0].argmax(-1).numpy())
                continue
            for _, end in data.window_bounds(len(y), CONTEXT_RUN["seq_len"], CONTEXT_RUN["seq_len"]):
                trues.append(y[end - 1 : end])
                preds.append(model(x[:, :end], torch.tensor([end])).argmax(-1).numpy())
    return np.concatenate(trues), np.concatenate(preds)


def test_streaming_accuracy_equals_running_each_test_block_whole(context_run, context_data):
    run_dir, metrics = context_run
    y_true, y_pred = whole_block_predictions(run_dir, context_data)
    assert len(y_true) == metrics["support"]  # the same timesteps (or windows) as `accuracy`
    assert metrics["streaming_accuracy"] == pytest.approx(float((y_true == y_pred).mean()))
    assert metrics["streaming_unavailable"] is None


def test_carried_context_beats_windows_run_from_a_zero_state(context_run):
    _, metrics = context_run
    # a window from a zero state has seen a few noisy steps of its segment; a stream has seen the segment so far
    assert metrics["streaming_accuracy"] > metrics["accuracy"] + 0.03


def test_streaming_accuracy_is_logged_beside_the_accuracy(separable_csv, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="models.train"):
        metrics = train(separable_csv, tmp_path / "run", epochs=1)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("test accuracy"))
    assert f"test accuracy {metrics['accuracy']:.4f}" in line
    assert f"streaming {metrics['streaming_accuracy']:.4f}" in line


def test_a_bidirectional_model_has_no_streaming_accuracy_and_says_why(trained_runs):
    metrics = json.loads((trained_runs["gru_last"] / "metrics.json").read_text())
    assert metrics["streaming_accuracy"] is None
    assert "bidirectional" in metrics["streaming_unavailable"]
    assert isinstance(metrics["accuracy"], float)
    unidirectional = json.loads((trained_runs["lstm_step"] / "metrics.json").read_text())
    assert 0.0 <= unidirectional["streaming_accuracy"] <= 1.0


# ------------------------------------------------------------------- settings: one source for each of them


@pytest.fixture
def help_by_flag(monkeypatch) -> dict[str, str]:
    """flag -> its entry in `--help` (wide, so no help text is wrapped; a long flag puts it on the next line)."""
    monkeypatch.setenv("COLUMNS", "1000")
    entries: dict[str, str] = {}
    flag = ""
    for line in build_parser().format_help().splitlines():
        if line.startswith("  --"):
            flag = line.split()[0]
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = ""
    return entries


def model_fields() -> list:
    return [f for f in fields(ModelConfig) if f.name not in FROM_DATA]


@pytest.mark.parametrize("f", fields(TrainConfig), ids=lambda f: f.name)
def test_every_training_default_reaches_the_command_line(f, help_by_flag):
    cfg = resolve_config(["--data", "x.csv"])
    assert getattr(cfg.train, f.name) == f.default
    assert cfg.settings()[f.name] == f.default
    if f.default is True:
        assert f"--no-{f.name.replace('_', '-')}" in help_by_flag
    else:
        assert f"(default: {f.default})" in help_by_flag[f"--{f.name.replace('_', '-')}"]


@pytest.mark.parametrize("f", model_fields(), ids=lambda f: f.name)
def test_every_model_default_reaches_the_command_line(f, help_by_flag):
    cfg = resolve_config(["--data", "x.csv"])
    assert getattr(cfg.model_config(input_dim=6, num_classes=3), f.name) == f.default
    flag = "--" + SETTING_NAMES.get(f.name, f.name).replace("_", "-")
    line = help_by_flag[flag]
    if f.default is not False:
        assert f"(default: {str(f.default).replace('_', '-')})" in line


def other_value(f, kind):
    """A value of the field's type that is not its default, as a flag's words and as the field then holds it."""
    if get_origin(kind) is Literal:
        value = next(c for c in get_args(kind) if c != f.default)
        return [value.replace("_", "-")], value
    if kind is bool:
        return [], not f.default
    value = kind(f.default + 1) if kind is int else f.default / 2 + 0.25
    return [str(value)], value


@pytest.mark.parametrize(
    ("cls", "f"),
    [(TrainConfig, f) for f in fields(TrainConfig)] + [(ModelConfig, f) for f in model_fields()],
    ids=lambda v: getattr(v, "name", getattr(v, "__name__", "")),
)
def test_every_field_has_a_flag_that_sets_it(cls, f):
    words, value = other_value(f, get_type_hints(cls)[f.name])
    name = SETTING_NAMES.get(f.name, f.name).replace("_", "-")
    flag = f"--no-{name}" if f.default is True else f"--{name}"
    cfg = resolve_config(["--data", "x.csv", flag, *words])
    held = cfg.train if cls is TrainConfig else cfg.model_config(input_dim=6, num_classes=3)
    assert getattr(held, f.name) == value


def test_every_setting_has_one_help_sentence():
    assert set(HELP) == {s.field for s in settings_table().values()}


def test_config_json_records_every_setting_and_reads_back(learned_run):
    run_dir, _ = learned_run
    recorded = json.loads((run_dir / "config.json").read_text())
    assert set(recorded) == set(settings_table())
    assert (recorded["hidden"], recorded["layers"], recorded["epochs"], recorded["lr"]) == (16, 1, 20, 0.01)
    cfg = RunConfig.from_settings(recorded)
    assert cfg.settings() == recorded
    assert cfg.model_config(6, 3) == checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE).model.config


def test_the_demo_config_resolves_to_its_settings():
    path = REPO_ROOT / "configs" / "demo.toml"
    with path.open("rb") as f:
        written = tomllib.load(f)
    settings = resolve_config(["--config", str(path)]).settings()
    assert {name: settings[name] for name in written} == written
    assert settings["dropout"] == ModelConfig.__dataclass_fields__["dropout"].default


@pytest.mark.parametrize("key", ["hidden_size", "num_layers", "input_dim", "config"])
def test_config_keys_are_the_flag_names_only(tmp_path, key):
    (tmp_path / "c.toml").write_text(f'data = "x.csv"\n{key} = 8\n')
    with pytest.raises(SystemExit, match=rf"unknown settings \['{key}'\]"):
        resolve_config(["--config", str(tmp_path / "c.toml")])


def test_a_bad_model_setting_fails_before_the_data_is_read(tmp_path):
    (tmp_path / "c.toml").write_text('data = "missing.csv"\ncell = "transformer"\n')
    with pytest.raises(SystemExit, match=r"c.toml with the flags: cell must be one of"):
        resolve_config(["--config", str(tmp_path / "c.toml")])
    with pytest.raises(SystemExit, match=r"flags: dropout must be in \[0, 1\), got 1.5"):
        resolve_config(["--data", "missing.csv", "--dropout", "1.5"])


def test_the_test_helper_refuses_an_unknown_setting(tmp_path):
    with pytest.raises(ValueError, match=r"unknown settings \['hiden'\]"):
        train(tmp_path / "x.csv", tmp_path / "run", hiden=8)
