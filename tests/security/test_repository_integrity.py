"""Files are checked against the manifest before onnxruntime sees them, and a manifest cannot name a file outside
its version folder: a tampered model that onnxruntime would load happily, and a manifest pointing at a good model
outside the repository with its true checksum, are both refused; the good versions keep serving."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from modelrepo import manifest as manifests
from modelrepo.manifest import FileEntry, ManifestError
from tests.security.conftest import GOOD

STEP = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]


def _state(server, name: str) -> dict:
    return server.get(f"/v1/models/{name}").json()["versions"][0]


def test_a_tampered_model_never_reaches_onnxruntime(hostile, hostile_repository: Path):
    tampered = hostile_repository / "tampered" / "1" / "model.onnx"
    session = ort.InferenceSession(str(tampered), providers=["CPUExecutionProvider"])  # it would load
    assert [i.name for i in session.get_inputs()][:2] == ["features", "lengths"]
    state = _state(hostile, "tampered")
    assert state["state"] == "failed"
    assert state["reason"].startswith("tampered/1/model.onnx: sha256 ")
    assert "does not match the manifest's" in state["reason"]
    answer = hostile.post("/v1/models/tampered/predict", {"sequences": [STEP]})
    assert answer.status_code == 503
    assert "tampered/1 is failed" in answer.json()["error"]["message"] or "no ready version" in answer.text
    assert hostile.post(f"/v1/models/{GOOD}/predict", {"sequences": [STEP]}).status_code == 200


def test_a_manifest_cannot_point_outside_its_folder(hostile, hostile_repository: Path):
    outside = hostile_repository.parent / "outside.onnx"
    assert outside.is_file()
    state = _state(hostile, "escape")
    assert state["state"] == "failed"
    assert "'../../outside.onnx' is not a plain file name inside the version folder" in state["reason"]
    assert hostile.post("/v2/models/escape/infer", {"inputs": []}).status_code == 503


@pytest.fixture
def version(model_repository: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / GOOD / "1"
    shutil.copytree(model_repository / GOOD / "1", folder)
    return folder


def _listing(version: Path, name: str, target: Path) -> manifests.Manifest:
    """The version's manifest with `name` listed under the true checksum of `target`."""
    manifest = manifests.read(version)
    files = {**manifest.files, name: FileEntry(manifests.sha256(target), target.stat().st_size)}
    return dataclasses.replace(manifest, files=files)


@pytest.mark.parametrize("name", ["../secret.bin", "../../1/../secret.bin", "{absolute}", "sub/../../secret.bin"])
def test_verify_refuses_names_that_leave_the_folder(version: Path, name: str):
    secret = version.parent / "secret.bin"
    secret.write_bytes(b"outside the version folder")
    name = name.format(absolute=secret)
    manifest = _listing(version, name, secret)  # the checksum matches: had verify opened it, it would pass
    with pytest.raises(ManifestError, match="is not a plain file name inside the version folder"):
        manifests.verify(version, manifest)


def test_verify_refuses_a_link_that_resolves_outside(version: Path):
    outside = version.parent / "elsewhere.onnx"
    shutil.move(version / "model.onnx", outside)
    (version / "model.onnx").symlink_to(outside)
    manifest = manifests.read(version)  # lists model.onnx with the true checksum of the file linked to
    with pytest.raises(ManifestError, match="resolves outside the version folder"):
        manifests.verify(version, manifest)


def test_read_refuses_a_manifest_naming_outside_files(version: Path):
    path = version / manifests.MANIFEST_FILE
    path.write_text(path.read_text().replace('"file": "model.onnx"', '"file": "../model.onnx"'))
    with pytest.raises(ManifestError, match=r"'\.\./model\.onnx' is not a plain file name"):
        manifests.read(version)


def test_an_intact_version_still_verifies(version: Path):
    manifests.verify(version, manifests.read(version))
