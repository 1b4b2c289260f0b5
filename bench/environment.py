"""The machine and the versions a run used, for the report."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from bench.contenders import ROOT
from bench.loadgen import wrk_version

MAIN_PACKAGES = ("onnxruntime", "flask", "gunicorn", "marshmallow", "orjson", "numpy", "torch")
PEER_PACKAGES = {"kserve": ("kserve", "onnxruntime", "fastapi", "uvicorn"), "mlserver": ("mlserver", "onnxruntime")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu_model()}, {cores} cores ({usable} usable), {platform.system()} {platform.release()}; load {load}"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _peer_versions(peer: str) -> str:
    freeze = ROOT / "bench" / f".venv-{peer}" / "freeze.txt"
    if not freeze.is_file():
        return f"{peer}: not installed"
    pins = dict(line.split("==", 1) for line in freeze.read_text().splitlines() if "==" in line)
    return ", ".join(f"{p} {pins.get(p, '?')}" for p in PEER_PACKAGES[peer])


def versions(loadgen: str) -> list[str]:
    main = ", ".join(f"{p} {_version(p)}" for p in MAIN_PACKAGES)
    return [
        f"python {platform.python_version()}; {main}",
        f"bench/.venv-kserve: {_peer_versions('kserve')}",
        f"bench/.venv-mlserver: {_peer_versions('mlserver')}",
        f"load generator: {'Python (bench/loadgen.py); ' if loadgen == 'python' else ''}{wrk_version()}",
    ]
