"""The versioned repository: atomic publish (nothing left behind by a failure), increasing versions, checksums,
and the shared `model_repository` fixture the service tests rely on."""

from __future__ import annotations

import hashlib
import json
import re
import stat

import pytest

from export import parity
from export.pipeline import export_run
from modelrepo import layout
from modelrepo.manifest import MANIFEST_FILE
from models import checkpoint
from tests.conftest import CLASS_NAMES, FEATURE_NAMES, HIDDEN, SEQ_LEN, SHARED_MODELS
from tests.export.conftest import write_run
from tests.modelrepo.test_manifest import tiny_manifest


@pytest.fixture
def tiny_run(tmp_path):
    """A small unidirectional RNN with a short training length: the quickest model to export."""
    return write_run(tmp_path / "run", seq_len=4, cell="rnn", hidden_size=4)


def assert_nothing_published(model_dir):
    assert layout.versions(model_dir) == []
    assert list(model_dir.iterdir()) == []  # no version, no temporary folder


def test_parity_failure_publishes_nothing_and_says_by_how_much(tiny_run, tmp_path):
    repo = tmp_path / "repository"
    with pytest.raises(parity.ParityError) as caught:
        export_run(tiny_run, repo, "m", tolerance=0.0)
    message = str(caught.value)
    figure = re.search(r"max \|Δprobability\| = (\S+) > tolerance 0e\+00", message)
    assert figure, message
    assert float(figure.group(1)) > 0
    assert "onnxruntime" in message
    assert "nothing was published" in message
    assert_nothing_published(repo / "m")

    version, _ = export_run(tiny_run, repo, "m")
    assert version == 1  # the failed attempt took no number


def test_failing_build_publishes_nothing(tiny_run, tmp_path):
    with pytest.raises(RuntimeError, match="opset"):
        export_run(tiny_run, tmp_path / "repository", "m", opset=99)
    assert_nothing_published(tmp_path / "repository" / "m")


@pytest.mark.parametrize("crash", [KeyboardInterrupt, OSError])
def test_crash_during_build_leaves_no_partial_version(tmp_path, crash):
    def build(folder):
        (folder / "model.onnx").write_bytes(b"half")
        raise crash("killed while writing")

    with pytest.raises(crash):
        layout.publish(tmp_path, "m", build)
    assert_nothing_published(tmp_path / "m")


def _build(folder):
    (folder / "model.onnx").write_bytes(b"x")
    return tiny_manifest()


def test_versions_increase(tiny_run, tmp_path):
    repo = tmp_path / "repository"
    assert [export_run(tiny_run, repo, "m")[0] for _ in range(2)] == [1, 2]
    (repo / "m" / "7").mkdir()
    (repo / "m" / "notes").mkdir()
    version, folder = layout.publish(repo, "m", _build)
    assert (version, folder) == (8, repo / "m" / "8")
    assert json.loads((folder / "manifest.json").read_text())["version"] == 8
    assert layout.versions(repo / "m") == [1, 2, 7, 8]


def test_published_version_is_as_readable_as_its_model_folder(tmp_path):
    """The staging folder is private while it is built; once published, a server running as another user must
    be able to read it like the model folder around it."""
    _, folder = layout.publish(tmp_path, "m", _build)
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE((tmp_path / "m").stat().st_mode)


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 65])
def test_bad_model_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="model name"):
        layout.publish(tmp_path, name, _build)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the shared repository fixture


def _manifest(model_repository, name):
    return json.loads((model_repository / name / "1" / MANIFEST_FILE).read_text())


@pytest.mark.parametrize("name", sorted(SHARED_MODELS))
def test_manifest_checksums_match_the_files(model_repository, name):
    folder = model_repository / name / "1"
    files = _manifest(model_repository, name)["files"]
    assert set(files) == {p.name for p in folder.iterdir()} - {MANIFEST_FILE}
    for file_name, entry in files.items():
        content = (folder / file_name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["bytes"] == len(content)


def test_shared_repository_holds_the_promised_models(model_repository, trained_runs):
    assert sorted(p.name for p in model_repository.iterdir()) == sorted(SHARED_MODELS)
    for name, settings in SHARED_MODELS.items():
        assert layout.versions(model_repository / name) == [1]
        manifest = _manifest(model_repository, name)
        model = manifest["model"]
        assert (model["cell"], model["num_layers"], model["bidirectional"], model["head"]) == (
            settings["cell"],
            settings["layers"],
            settings["bidirectional"],
            settings["head"],
        )
        assert (model["hidden_size"], model["input_dim"], model["num_classes"]) == (HIDDEN, 6, 3)
        assert manifest["feature_names"] == list(FEATURE_NAMES)
        assert sorted(manifest["class_names"]) == sorted(CLASS_NAMES)
        assert manifest["training"]["seq_len"] == SEQ_LEN
        ckpt = checkpoint.load(trained_runs[name] / checkpoint.CHECKPOINT_FILE)
        assert ckpt.model.config.to_dict() == {k: v for k, v in model.items() if k != "parameter_count"}
        assert ckpt.class_names == manifest["class_names"]


def test_manifest_has_every_field_the_issue_lists(model_repository):
    manifest = _manifest(model_repository, "lstm_step")
    assert (manifest["name"], manifest["version"]) == ("lstm_step", 1)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", manifest["created"])
    assert manifest["model"]["parameter_count"] == 4 * 16 * (6 + 16 + 2) + (16 + 1) * 3
    assert set(manifest["normalization"]) == {"mean", "std"}
    assert len(manifest["normalization"]["mean"]) == 6
    assert {"accuracy", "macro_f1"} <= set(manifest["metrics"])
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime"}
    inputs = {s["name"]: s for s in manifest["onnx"]["inputs"]}
    assert inputs["features"] == {"name": "features", "datatype": "FP32", "shape": ["batch", "time", 6]}
    assert inputs["lengths"] == {"name": "lengths", "datatype": "INT64", "shape": ["batch"]}
    assert inputs["h0"]["shape"] == inputs["c0"]["shape"] == [1, "batch", 16]
    outputs = {s["name"]: s["shape"] for s in manifest["onnx"]["outputs"]}
    assert outputs == {
        "probabilities": ["batch", "time", 3],
        "logits": ["batch", "time", 3],
        "hn": [1, "batch", 16],
        "cn": [1, "batch", 16],
    }
    assert manifest["parity"]["max_abs_diff_probability"] <= 1e-5
    assert _manifest(model_repository, "gru_last")["onnx"]["outputs"][0]["shape"] == ["batch", 3]
