"""`manifest.json`, typed: what a published model version is (its `ModelConfig`), what its ONNX graph takes and
returns (`TensorSpec`), the state tensors a unidirectional model carries between chunks of a stream, and the
sha256 of every file. Reading, writing and verifying it happen here and nowhere else."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Cell = Literal["rnn", "gru", "lstm"]
Head = Literal["per_timestep", "last"]
CELLS = ("rnn", "gru", "lstm")
HEADS = ("per_timestep", "last")


@dataclass(frozen=True)
class ModelConfig:
    """What a sequence classifier is: written into every checkpoint and manifest, read by training and serving."""

    input_dim: int
    num_classes: int
    cell: Cell = "lstm"
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    head: Head = "per_timestep"

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        for name in ("input_dim", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers * directions, hidden): the state tensors are [layers * directions, B, hidden]."""
        return self.num_layers * self.num_directions, self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_names(config: ModelConfig) -> tuple[list[str], list[str]]:
    """Names of the state inputs and outputs; none for bidirectional models (a backward pass cannot stream)."""
    if config.bidirectional:
        return [], []
    if config.cell == "lstm":
        return ["h0", "c0"], ["hn", "cn"]
    return ["h0"], ["hn"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output, with KServe V2 datatype names (FP32, INT64) and named dynamic axes."""

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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(str(raw["name"]), str(raw["datatype"]), tuple(raw["shape"]))


MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "seqserve-manifest/1"


class ManifestError(Exception):
    """A version that cannot be served as it is on disk; the message says which file and why."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Normalization:
    """The training split's feature statistics; the graphs apply (x - mean) / std themselves."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` of one published version. `version` and `files` are filled in by `layout.publish`."""

    name: str
    model: ModelConfig
    parameter_count: int
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    normalization: Normalization
    onnx_file: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    torchscript_file: str
    version: int = 0
    files: dict[str, FileEntry] = field(default_factory=dict)
    created: str = ""
    # Informational sections, shown to users as they are: how it was trained, how well, with what, parity figures.
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    @property
    def input_dim(self) -> int:
        return len(self.feature_names)

    @property
    def head(self) -> str:
        return self.model.head

    @property
    def per_timestep(self) -> bool:
        return self.model.head == "per_timestep"

    @property
    def state_inputs(self) -> tuple[TensorSpec, ...]:
        """The graph's state inputs (h0, c0) in order; empty for a bidirectional model."""
        names = state_names(self.model)[0]
        return tuple(t for t in self.inputs if t.name in names)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "model": {**self.model.to_dict(), "parameter_count": self.parameter_count},
            "feature_names": list(self.feature_names),
            "class_names": list(self.class_names),
            "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
            "training": self.training,
            "metrics": self.metrics,
            "onnx": {
                "file": self.onnx_file,
                "opset": self.opset,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
            },
            "torchscript": {"file": self.torchscript_file},
            "versions": self.versions,
            "parity": self.parity,
            "files": {name: {"sha256": f.sha256, "bytes": f.bytes} for name, f in self.files.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        model = dict(raw["model"])
        parameter_count = int(model.pop("parameter_count"))
        return cls(
            format=str(raw.get("format", MANIFEST_FORMAT)),
            name=str(raw["name"]),
            version=int(raw["version"]),
            created=str(raw.get("created", "")),
            model=ModelConfig(**model),
            parameter_count=parameter_count,
            feature_names=tuple(str(n) for n in raw["feature_names"]),
            class_names=tuple(str(n) for n in raw["class_names"]),
            normalization=Normalization(
                tuple(float(x) for x in raw["normalization"]["mean"]),
                tuple(float(x) for x in raw["normalization"]["std"]),
            ),
            training=dict(raw.get("training", {})),
            metrics=dict(raw.get("metrics", {})),
            onnx_file=check_file_name(str(raw["onnx"]["file"])),
            opset=int(raw["onnx"]["opset"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in raw["onnx"]["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in raw["onnx"]["outputs"]),
            torchscript_file=_optional_file(str(raw.get("torchscript", {}).get("file", ""))),
            versions=dict(raw.get("versions", {})),
            parity=dict(raw.get("parity", {})),
            files={
                check_file_name(n): FileEntry(str(f["sha256"]), int(f["bytes"]))
                for n, f in raw.get("files", {}).items()
            },
        )


def check_file_name(name: str) -> str:
    """A file a manifest names is a plain name inside its version folder: no separator, no `..`, nothing absolute,
    so a manifest cannot make a reader open a file elsewhere (`../../etc/passwd`, `/tmp/x.onnx`)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ValueError(f"{name!r} is not a plain file name inside the version folder")
    return name


def read(folder: Path) -> Manifest:
    """The manifest of a version folder, typed; `ManifestError` names the file and what is wrong with it."""
    path = folder / MANIFEST_FILE
    try:
        return Manifest.from_dict(json.loads(path.read_bytes()))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc


def write(folder: Path, manifest: Manifest) -> None:
    """Write and fsync `manifest.json` (the publish renames the folder only once everything is on disk)."""
    with (folder / MANIFEST_FILE).open("wb") as f:
        f.write(json.dumps(manifest.to_dict(), indent=2).encode())
        f.flush()
        os.fsync(f.fileno())


def _optional_file(name: str) -> str:
    return check_file_name(name) if name else name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, FileEntry]:
    """Checksums of every file in a version folder but the manifest itself."""
    return {
        p.name: FileEntry(sha256(p), p.stat().st_size)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }


def verify(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists is there, inside the folder, with its sha256; the ONNX file must be listed.
    Names are checked before any file is opened, and a listed file (or link) that resolves elsewhere is refused."""
    if manifest.onnx_file not in manifest.files:
        raise ManifestError(f"{folder}: manifest lists no checksum for {manifest.onnx_file}")
    inside = folder.resolve()
    for name, entry in manifest.files.items():
        try:
            path = folder / check_file_name(name)
        except ValueError as exc:
            raise ManifestError(f"{folder / MANIFEST_FILE}: files: {exc}") from None
        if path.resolve().parent != inside:
            raise ManifestError(f"{path}: resolves outside the version folder (a link?)")
        if not path.is_file():
            raise ManifestError(f"{path}: listed in the manifest but missing")
        digest = sha256(path)
        if digest != entry.sha256:
            raise ManifestError(f"{path}: sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}…")
