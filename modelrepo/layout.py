"""Where versions live: `REPO/NAME/VERSION/` folders (integer names) holding a `manifest.json` and the files it
lists, and an optional `REPO/NAME/config.json` of serving settings for every version of a model.

A version is built in a hidden temporary folder inside `REPO/NAME` (same file system) and renamed into place, so a
reader sees a whole version or none: hidden folders are invisible to `scan`. Two publishers at once race for the
next integer: `rename` refuses a target that already holds files, and the loser takes the next number.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrepo import manifest as manifests
from modelrepo.manifest import MANIFEST_FILE, Manifest, ManifestError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MODEL_CONFIG_FILE = "config.json"
TMP_PREFIX = ".tmp-"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"model name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class VersionDir:
    name: str
    version: int
    path: Path

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"


def versions(model_dir: Path) -> list[int]:
    """The version numbers under a model folder (published or not: any integer folder counts for numbering)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def scan(root: Path) -> list[VersionDir]:
    """Every published `NAME/VERSION` folder (one with a manifest), sorted; a missing root holds none."""
    if not root.is_dir():
        return []
    found = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        for number in versions(model_dir):
            if (model_dir / str(number) / MANIFEST_FILE).is_file():
                found.append(VersionDir(model_dir.name, number, model_dir / str(number)))
    return found


def read_version(entry: VersionDir) -> Manifest:
    """The typed manifest of a version, checked against its folder's name and number."""
    manifest = manifests.read(entry.path)
    if (manifest.name, manifest.version) != (entry.name, entry.version):
        raise ManifestError(f"{entry.path}: manifest says {manifest.name}/{manifest.version}, folder is {entry.key}")
    return manifest


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model's optional `config.json` (raw; the service validates it), {} when absent."""
    path = model_dir / MODEL_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    return raw


def publish(repository: Path, name: str, build: Callable[[Path], Manifest]) -> tuple[int, Path]:
    """`build(folder)` writes the artifacts into `folder` and returns their manifest (version and files are filled
    in here); on any exception nothing is published and the temporary folder is removed."""
    model_dir = repository / check_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
    try:
        manifest = dataclasses.replace(build(staging), name=name, files=manifests.file_entries(staging))
        # mkdtemp makes the folder private (0700); published, it must be as readable as the model folder.
        staging.chmod(model_dir.stat().st_mode & 0o7777)
        while True:
            version = max(versions(model_dir), default=0) + 1
            manifests.write(staging, dataclasses.replace(manifest, version=version))
            _fsync_dir(staging)
            target = model_dir / str(version)
            try:
                os.rename(staging, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another publisher took this number first
                raise
            _fsync_dir(model_dir)
            return version, target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    for entry in path.iterdir():
        if entry.is_file():
            with entry.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
