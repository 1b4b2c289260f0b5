"""Reading the model repository that `python -m export` writes: `ROOT/NAME/VERSION/manifest.json` plus files.

Only integer version folders count; hidden folders (an export in progress) are invisible. Every file listed in the
manifest is checked against its sha256 before a version is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

MANIFEST_FILE = "manifest.json"
MODEL_CONFIG_FILE = "config.json"


class LoadError(Exception):
    """A version that cannot be served; the message says why."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int | str, ...]  # str: a dynamic axis ("batch", "time")

    @property
    def batch_axis(self) -> int:
        return self.shape.index("batch")

    @property
    def time_axis(self) -> int | None:
        return self.shape.index("time") if "time" in self.shape else None

    def v2_shape(self) -> list[int]:
        return [-1 if isinstance(d, str) else d for d in self.shape]


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    head: str
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    onnx_file: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    raw: dict[str, Any]

    @property
    def input_dim(self) -> int:
        return len(self.feature_names)

    @property
    def per_timestep(self) -> bool:
        return self.head == "per_timestep"

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == name), None)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        def tensors(key: str) -> tuple[TensorInfo, ...]:
            return tuple(TensorInfo(t["name"], t["datatype"], tuple(t["shape"])) for t in raw["onnx"][key])

        return cls(
            name=raw["name"],
            version=int(raw["version"]),
            head=raw["model"]["head"],
            feature_names=tuple(raw["feature_names"]),
            class_names=tuple(raw["class_names"]),
            onnx_file=raw["onnx"]["file"],
            inputs=tensors("inputs"),
            outputs=tensors("outputs"),
            raw=raw,
        )


@dataclass(frozen=True)
class VersionDir:
    name: str
    version: int
    path: Path


def scan(root: Path) -> list[VersionDir]:
    """Every `NAME/VERSION` folder with a manifest, sorted; missing root: empty."""
    if not root.is_dir():
        return []
    found = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in model_dir.iterdir():
            if version_dir.is_dir() and version_dir.name.isdigit() and (version_dir / MANIFEST_FILE).is_file():
                found.append(VersionDir(model_dir.name, int(version_dir.name), version_dir))
    return sorted(found, key=lambda v: (v.name, v.version))


def read_manifest(entry: VersionDir) -> Manifest:
    try:
        raw = orjson.loads((entry.path / MANIFEST_FILE).read_bytes())
        manifest = Manifest.from_dict(raw)
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"{entry.path / MANIFEST_FILE}: unreadable manifest ({type(exc).__name__}: {exc})") from exc
    if (manifest.name, manifest.version) != (entry.name, entry.version):
        raise LoadError(
            f"{entry.path}: manifest says {manifest.name}/{manifest.version}, folder is {entry.name}/{entry.version}"
        )
    return manifest


def verify_files(entry: VersionDir, manifest: Manifest) -> None:
    files = manifest.raw.get("files", {})
    if manifest.onnx_file not in files:
        raise LoadError(f"{entry.path}: manifest lists no checksum for {manifest.onnx_file}")
    for name, info in files.items():
        path = entry.path / name
        if not path.is_file():
            raise LoadError(f"{path}: listed in the manifest but missing")
        digest = _sha256(path)
        if digest != info.get("sha256"):
            raise LoadError(
                f"{path}: sha256 {digest[:12]}… does not match the manifest's {str(info.get('sha256'))[:12]}…"
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model's optional `config.json` (raw; the caller validates it), {} when absent."""
    path = model_dir / MODEL_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise LoadError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(raw, dict):
        raise LoadError(f"{path}: expected a JSON object")
    return raw
