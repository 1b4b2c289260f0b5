"""`python -m bench.handoff` measures both thread hand-offs under gevent (in its own process: it monkey-patches)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_handoff_benchmark_measures_both_pools():
    done = subprocess.run(
        [sys.executable, "-m", "bench.handoff", "--calls", "400", "--greenlets", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\s*(.+?): +([\d.]+) us CPU per call alone, +([\d.]+) us with 4 greenlets", done.stdout, re.M)
    assert [name for name, *_ in rows] == ["gevent ThreadPool", "seqserve NativePool"], done.stdout
    assert all(float(alone) > 0 and float(many) > 0 for _, alone, many in rows)
