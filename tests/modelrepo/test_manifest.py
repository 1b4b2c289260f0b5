"""The manifest contract: every published manifest reads back into the same typed form, and what cannot be served
is refused with the file and the reason."""

from __future__ import annotations

import dataclasses
import json

import pytest

from modelrepo import layout
from modelrepo import manifest as manifests
from modelrepo.manifest import Manifest, ManifestError, ModelConfig, Normalization, TensorSpec
from tests.conftest import SHARED_MODELS


def tiny_manifest(**changes) -> Manifest:
    """A complete manifest of a made-up GRU, for tests that publish files of their own."""
    config = ModelConfig(input_dim=2, num_classes=2, cell="gru", hidden_size=3)
    base = Manifest(
        name="m",
        model=config,
        parameter_count=0,
        feature_names=("a", "b"),
        class_names=("x", "y"),
        normalization=Normalization((0.0, 0.0), (1.0, 1.0)),
        onnx_file="model.onnx",
        opset=17,
        inputs=(TensorSpec("features", "FP32", ("batch", "time", 2)), TensorSpec("lengths", "INT64", ("batch",))),
        outputs=(TensorSpec("probabilities", "FP32", ("batch", "time", 2)),),
        torchscript_file="model.pt",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("name", sorted(SHARED_MODELS))
def test_published_manifests_round_trip_through_the_typed_form(model_repository, name):
    folder = model_repository / name / "1"
    raw = json.loads((folder / manifests.MANIFEST_FILE).read_text())
    typed = manifests.read(folder)
    assert typed.to_dict() == raw
    assert typed.model.cell == SHARED_MODELS[name]["cell"]
    assert typed.input("features").shape == ("batch", "time", 6)
    manifests.verify(folder, typed)


def test_state_inputs_follow_the_cell_and_direction(model_repository):
    assert [t.name for t in manifests.read(model_repository / "lstm_step" / "1").state_inputs] == ["h0", "c0"]
    assert manifests.read(model_repository / "gru_last" / "1").state_inputs == ()


def test_publish_fills_version_and_checksums(tmp_path):
    def build(folder):
        (folder / "model.onnx").write_bytes(b"onnx bytes")
        return tiny_manifest(name="ignored")

    version, folder = layout.publish(tmp_path, "m", build)
    published = layout.read_version(layout.VersionDir("m", version, folder))
    assert (published.name, published.version) == ("m", 1)
    assert published.files["model.onnx"] == manifests.FileEntry(manifests.sha256(folder / "model.onnx"), 10)
    assert layout.scan(tmp_path) == [layout.VersionDir("m", 1, folder)]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.onnx").write_bytes(b"other"), r"model.onnx: sha256 \w+… does not match"),
        (lambda f: (f / "model.onnx").unlink(), "model.onnx: listed in the manifest but missing"),
    ],
)
def test_verify_names_the_damaged_file(tmp_path, damage, message):
    def build(folder):
        (folder / "model.onnx").write_bytes(b"onnx bytes")
        return tiny_manifest()

    _, folder = layout.publish(tmp_path, "m", build)
    damage(folder)
    with pytest.raises(ManifestError, match=message):
        manifests.verify(folder, manifests.read(folder))


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"name": "m"}', b"\xff"])
def test_unreadable_manifests_name_their_file(tmp_path, content):
    (tmp_path / manifests.MANIFEST_FILE).write_bytes(content)
    with pytest.raises(ManifestError, match=r"manifest.json: unreadable manifest"):
        manifests.read(tmp_path)


def test_a_manifest_in_the_wrong_folder_is_refused(tmp_path):
    _, folder = layout.publish(tmp_path, "m", lambda f: tiny_manifest())
    moved = folder.rename(tmp_path / "m" / "5")
    with pytest.raises(ManifestError, match="manifest says m/1, folder is m/5"):
        layout.read_version(layout.VersionDir("m", 5, moved))
