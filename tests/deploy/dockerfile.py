"""Just enough of a Dockerfile reader to take a stage's ENV, WORKDIR, COPY, ENTRYPOINT, CMD and HEALTHCHECK, so that
tests run what the image runs and break when the Dockerfile drifts from them."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

FROM = re.compile(r"^(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?$", re.IGNORECASE)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs in order (later ones win), values unexpanded (`$PATH` stays as written)."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"ENV {args!r}: only the KEY=VALUE form is read here")
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT or CMD in exec (JSON) form; [] when the stage has none."""
        args = self.last(keyword)
        if args is None:
            return []
        argv = json.loads(args)
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError(f"{keyword} {args!r} is not in exec form")
        return argv

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options, argv) of `HEALTHCHECK [--opt=value...] CMD [...]` in exec form."""
        args = self.last("HEALTHCHECK")
        if args is None:
            raise ValueError(f"stage {self.name} has no HEALTHCHECK")
        options_text, sep, command = args.partition("CMD ")
        if not sep:
            raise ValueError(f"HEALTHCHECK {args!r} has no CMD")
        options = dict(opt.removeprefix("--").split("=", 1) for opt in options_text.split())
        argv = json.loads(command)
        if not isinstance(argv, list):
            raise ValueError(f"HEALTHCHECK CMD {command!r} is not in exec form")
        return options, argv

    def workdir(self) -> str:
        workdir = self.last("WORKDIR")
        if workdir is None:
            raise ValueError(f"stage {self.name} has no WORKDIR")
        return workdir

    def copies_into_workdir(self) -> list[str]:
        """Sources of the plain `COPY src... ./` instructions that follow the last WORKDIR (build context paths)."""
        sources: list[str] = []
        seen_workdir = False
        for keyword, args in self.instructions:
            if keyword == "WORKDIR":
                seen_workdir, sources = True, []
            elif keyword == "COPY" and seen_workdir:
                words = args.split()
                if words[-1] in ("./", ".") and not any(w.startswith("--from") for w in words):
                    sources.extend(w for w in words[:-1] if not w.startswith("--"))
        return sources


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse(path: Path) -> dict[str, Stage]:
    """Stages by name (unnamed ones by index); global ARGs before the first FROM are dropped."""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = FROM.match(args)
            if not match:
                raise ValueError(f"cannot read FROM {args!r}")
            stage = Stage(match["name"] or str(len(stages)), match["image"])
            stages[stage.name] = stage
        elif stage is not None:
            stage.instructions.append((keyword, args))
    return stages
