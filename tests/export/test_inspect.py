"""`python -m export.inspect`: a real PNG from CSV, .npy and JSON inputs of real exported models; bad files are one
located log line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from export.inspect import main, read_sequence, segments
from export.pipeline import export_run
from tests.conftest import FEATURE_NAMES, REPO_ROOT, assert_png, make_stream, write_csv_stream
from tests.export.conftest import write_run

STEPS = 30


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """`lstm` (2 versions: per-timestep, then 2 layers) and `gru_bi` (bidirectional 2-layer, `last` head)."""
    root = tmp_path_factory.mktemp("inspect")
    repo = root / "repo"
    export_run(write_run(root / "a", hidden_size=6), repo, "lstm")
    export_run(write_run(root / "b", hidden_size=6, num_layers=2, seed=1), repo, "lstm")
    gru = write_run(root / "c", hidden_size=4, cell="gru", num_layers=2, bidirectional=True, head="last", seed=2)
    export_run(gru, repo, "gru_bi")
    return repo


@pytest.fixture(scope="module")
def stream():
    features, labels = make_stream(STEPS, seed=5)
    return features * 3, labels


def write_input(kind: str, path, features, labels):
    if kind == "csv":  # columns in another order than the model's, plus a label column: both must not matter
        return write_csv_stream(path.with_suffix(".csv"), features[:, ::-1], labels, FEATURE_NAMES[::-1])
    if kind == "npy":
        np.save(path.with_suffix(".npy"), features)
        return path.with_suffix(".npy")
    steps = [dict(zip(FEATURE_NAMES, map(float, row), strict=True)) for row in features[:3]]
    body = {"sequence": steps + features[3:].tolist()}
    path.with_suffix(".json").write_text(json.dumps(body))
    return path.with_suffix(".json")


@pytest.mark.parametrize("kind", ["csv", "npy", "json"])
def test_draws_a_png_and_prints_a_summary(repository, stream, tmp_path, capsys, kind):
    source = write_input(kind, tmp_path / "input", *stream)
    out = tmp_path / "pictures" / "inside.png"
    assert main([str(repository / "lstm"), "--version", "1", "--input", str(source), "--out", str(out)]) == 0
    assert_png(out)
    printed = capsys.readouterr().out
    assert f"{repository / 'lstm'} version 1: lstm, 1 layer(s) x 6 units" in printed
    assert f"{source}: {STEPS} timesteps" in printed
    assert "horizon  mean" in printed
    assert str(out) in printed


def test_every_input_format_reads_the_same_sequence(stream, tmp_path):
    features, labels = stream
    for kind in ("csv", "npy", "json"):
        sequence = read_sequence(write_input(kind, tmp_path / kind, features, labels), FEATURE_NAMES)
        np.testing.assert_allclose(sequence, features, rtol=1e-6, err_msg=kind)


@pytest.mark.parametrize(
    ("model", "described"),
    [
        ("gru_bi", "version 1: bidirectional gru, 2 layer(s) x 4 units, last head"),
        ("lstm", "version 2: lstm, 2 layer(s) x 6 units"),
    ],
)
def test_the_newest_version_of_deeper_and_bidirectional_models(repository, stream, tmp_path, capsys, model, described):
    source = write_input("npy", tmp_path / "input", *stream)
    out = tmp_path / "picture.png"
    assert main([str(repository / model), "--input", str(source), "--out", str(out)]) == 0
    assert_png(out)
    assert described in capsys.readouterr().out


def test_a_malformed_csv_exits_2_with_the_line_and_column(repository, tmp_path):
    """Run as the command, to see exactly what a user sees: one error line, no traceback."""
    source = tmp_path / "bad.csv"
    source.write_text("ax,ay,az,gx,gy,gz,label\n" + "1,2,3,4,5,6,idle\n" * 2 + "1,2,3,4,abc,6,idle\n")
    command = [sys.executable, "-m", "export.inspect", str(repository / "lstm"), "--input", str(source)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "x.png")], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert f"{source}: line 4, column 'gy': 'abc' is not a number" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.png").exists()


BAD_INPUTS = [
    ("a.csv", "ax,ay,az,gx,gy\n1,2,3,4,5\n", r"line 1: the header lacks the feature column\(s\) \['gz'\]"),
    ("b.csv", "ax,ay,az,gx,gy,gz\n1,2,3,4,5,6\n1,2,3\n", "line 3: 3 fields, the header has 6"),
    ("c.csv", "ax,ay,az,gx,gy,gz\n1,2,3,4,5,nan\n", "line 2, column 'gz': 'nan' is not finite"),
    ("d.csv", "ax,ay,az,gx,gy,gz\n", "no data rows after the header"),
    ("e.json", "[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5]]", r"sequence\[1\]: expected 6 features, got 5"),
    ("f.json", '[[1, 2, 3, 4, 5, "6"]]', r"sequence\[0\]\[5\] \('gz'\): expected a number, got str"),
    ("g.json", '[{"ax": 1, "ay": 2}]', r"sequence\[0\]: missing features \['az', 'gx', 'gy', 'gz'\]"),
    ("h.json", "[[1, 2, 3, 4, 5, NaN]]", "not valid JSON: NaN is not a number"),
    ("i.json", "{]", "not valid JSON"),
    ("j.txt", "1,2,3", r"unknown input format '\.txt'; use \.csv, \.npy or \.json"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_located(repository, tmp_path, caplog, name, content, message):
    source = tmp_path / name
    source.write_text(content)
    with caplog.at_level(logging.ERROR, logger="export.inspect"):
        assert main([str(repository / "lstm"), "--input", str(source), "--out", str(tmp_path / "x.png")]) == 2
    assert len(caplog.records) == 1
    logged = caplog.records[0].getMessage()
    assert logged.startswith(f"{source}: ")
    assert re.search(message, logged), logged


@pytest.mark.parametrize(
    ("array", "extra", "message"),
    [
        (np.zeros((4, 5)), [], r"array of shape \[4, 5\], expected \[T, 6\]"),
        (np.array([[0, 1, 2, np.inf, 4, 5]], dtype=float), [], r"\[0, 3\] \(timestep 0, feature 'gx'\) is inf"),
        (np.zeros((9, 6)), ["--max-timesteps", "8"], "sequence: 9 timesteps exceed the inspection limit of 8"),
    ],
)
def test_bad_arrays_are_located(repository, tmp_path, caplog, array, extra, message):
    source = tmp_path / "a.npy"
    np.save(source, array)
    with caplog.at_level(logging.ERROR, logger="export.inspect"):
        code = main([str(repository / "lstm"), "--input", str(source), "--out", str(tmp_path / "x.png"), *extra])
    assert code == 2
    logged = caplog.records[0].getMessage()
    assert logged.startswith(f"{source}: ")
    assert re.search(message, logged), logged


def test_unknown_models_and_versions_exit_2(repository, stream, tmp_path, caplog):
    source = write_input("npy", tmp_path / "input", *stream)
    out = str(tmp_path / "x.png")
    with caplog.at_level(logging.ERROR, logger="export.inspect"):
        assert main([str(repository / "nope"), "--input", str(source), "--out", out]) == 2
        assert main([str(repository / "lstm"), "--version", "7", "--input", str(source), "--out", out]) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"{repository / 'nope'}: no published versions (expected REPO/NAME/VERSION/manifest.json)",
        f"{repository / 'lstm'}: no version 7; versions: [1, 2]",
    ]


def test_segments_are_runs_of_one_class():
    assert segments(("a", "a", "b", "a", "a", "a")) == [("a", 0, 1), ("b", 2, 2), ("a", 3, 5)]
    assert segments(("x",)) == [("x", 0, 0)]


def test_a_manifest_that_does_not_match_the_graph_exits_1(repository, stream, tmp_path, caplog):
    """The manifest's normalisation is what numpy uses; a wrong one must stop the picture, not skew it."""
    model = tmp_path / "repo" / "lstm"
    shutil.copytree(repository / "lstm" / "1", model / "1")
    manifest = json.loads((model / "1" / "manifest.json").read_text())
    manifest["normalization"]["mean"] = [m + 1.0 for m in manifest["normalization"]["mean"]]
    (model / "1" / "manifest.json").write_text(json.dumps(manifest))
    source, out = write_input("npy", tmp_path / "input", *stream), tmp_path / "x.png"
    with caplog.at_level(logging.ERROR, logger="export.inspect"):
        assert main([str(model), "--input", str(source), "--out", str(out)]) == 1
    assert "numpy's recomputation and onnxruntime disagree by" in caplog.records[0].getMessage()
    assert not out.exists()


def test_an_unwritable_picture_exits_2(repository, stream, tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    source = write_input("npy", tmp_path / "input", *stream)
    with caplog.at_level(logging.ERROR, logger="export.inspect"):
        code = main([str(repository / "lstm"), "--input", str(source), "--out", str(tmp_path / "file" / "x.png")])
    assert code == 2
    assert caplog.records[0].getMessage().startswith(f"{tmp_path / 'file' / 'x.png'}: cannot write the picture")
