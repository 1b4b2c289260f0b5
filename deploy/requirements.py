"""Print the pinned requirements of pyproject.toml (core dependencies plus the named extras), one per line.

The images install these first, in a layer of their own, so that editing the code does not reinstall numpy and
onnxruntime: `python deploy/requirements.py pyproject.toml cpu > requirements.txt`. pyproject.toml stays the one
place where a version is written.

`--strip-extras` drops the `[...]` of each requirement: the GPU image sits on a CUDA/cuDNN base image that already
holds the libraries which `onnxruntime-gpu[cuda,cudnn]` would otherwise download a second time as wheels.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

EXTRAS = re.compile(r"\[[^\]]*\]")


def requirements(pyproject: Path, extras: list[str], strip_extras: bool = False) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    if unknown := sorted(set(extras) - set(optional)):
        raise SystemExit(f"error: {pyproject} has no extra {', '.join(unknown)} (known: {', '.join(optional)})")
    lines = list(project["dependencies"]) + [r for extra in extras for r in optional[extra]]
    return [EXTRAS.sub("", line) for line in lines] if strip_extras else lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python deploy/requirements.py", description=__doc__)
    p.add_argument("pyproject", type=Path)
    p.add_argument("extras", nargs="*", help="optional-dependency groups to add to the core dependencies")
    p.add_argument("--strip-extras", action="store_true", help="drop the [extras] of each requirement")
    args = p.parse_args(argv)
    sys.stdout.write("".join(f"{line}\n" for line in requirements(args.pyproject, args.extras, args.strip_extras)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
