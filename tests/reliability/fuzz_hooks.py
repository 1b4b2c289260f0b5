"""schemathesis hooks for the fuzz runs, loaded by `st run` through `SCHEMATHESIS_HOOKS=tests.reliability.fuzz_hooks`
(configured by environment variables, since `st` runs in its own process):

- `FUZZ_MODELS` (comma-separated): positive cases name a real model and version about half of the time (chosen
  from the generated value's hash, so hypothesis still drives the choice), or generated requests would mostly stop
  at "model not found" and never reach validation and inference;
- `FUZZ_RECORD`: every answer is appended as `METHOD PATH-TEMPLATE STATUS` (the cases run and the statuses seen);
- `FUZZ_FORBIDDEN` (separated by `|`): strings no answer may contain (the repository's absolute path, ...); the
  check `no_internal_details` also refuses stack traces and installed-package paths.
"""

from __future__ import annotations

import os
import threading
import zlib
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation

LEAKS = ("Traceback (most recent call last)", "site-packages", 'File "/')
_lock = threading.Lock()


def _models() -> list[str]:
    return [m for m in os.environ.get("FUZZ_MODELS", "").split(",") if m]


def _pick(value: Any, choices: list[Any]) -> Any | None:
    """One of `choices` for about half of the generated values, else None (keep the generated value)."""
    slot = zlib.crc32(repr(value).encode()) % (2 * len(choices))
    return choices[slot] if slot < len(choices) else None


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    params = case.path_parameters
    if not params or (case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)):
        return case
    if "name" in params and (name := _pick(params["name"], _models())) is not None:
        params["name"] = name
        if "version" in params and _pick(params["version"], [1]) is not None:
            params["version"] = 1
    return case


@schemathesis.hook
def after_call(context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response) -> None:
    record = os.environ.get("FUZZ_RECORD")
    if record:
        with _lock, open(record, "a") as out:
            out.write(f"{case.method} {case.path} {response.status_code}\n")


@schemathesis.check
def no_internal_details(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """No answer shows a stack trace or a path of the server's file system."""
    text = response.content.decode("utf-8", errors="replace")
    forbidden = [s for s in os.environ.get("FUZZ_FORBIDDEN", "").split("|") if s]
    found = [s for s in (*LEAKS, *forbidden) if s in text]
    if found:
        raise AssertionError(f"the answer shows internal details {found}: {text[:300]}")
