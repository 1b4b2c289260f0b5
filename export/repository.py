"""The versioned model repository: `REPO/NAME/VERSION/{model.onnx, model.pt, manifest.json}`.

A version is built in a hidden temporary folder inside `REPO/NAME` (same file system) and renamed into place, so a
reader sees a whole version or none. Two exports at once race for the next integer: `rename` refuses a target
that already holds files, and the loser takes the next number.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TMP_PREFIX = ".tmp-"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"model name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }


def publish(repository: Path, name: str, build: Callable[[Path], dict[str, Any]]) -> tuple[int, Path]:
    """`build(folder)` writes the artifacts into `folder` and returns the manifest (without version and files);
    on any exception nothing is published and the temporary folder is removed."""
    model_dir = repository / check_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
    try:
        manifest = build(staging)
        manifest["files"] = file_entries(staging)
        # mkdtemp makes the folder private (0700); published, it must be as readable as the model folder.
        staging.chmod(model_dir.stat().st_mode & 0o7777)
        while True:
            version = max(versions(model_dir), default=0) + 1
            manifest["version"] = version
            _write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
            _fsync_dir(staging)
            target = model_dir / str(version)
            try:
                os.rename(staging, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another export took this number first
                raise
            _fsync_dir(model_dir)
            return version, target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_synced(path: Path, payload: bytes) -> None:
    with path.open("wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


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
