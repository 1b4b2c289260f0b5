"""`python -m bench.handoff` measures both thread hand-offs under gevent (in its own process: it monkey-patches), and
with `--model` a real model's runs through seqserve's pool, one call at a time."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_handoff_benchmark_measures_both_pools(model_repository):
    model = model_repository / "lstm_step" / "1" / "model.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.handoff",
            "--calls",
            "400",
            "--greenlets",
            "4",
            "--model",
            str(model),
            "--model-calls",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\s*(.+?): +([\d.]+) us CPU per call alone, +([\d.]+) us with 4 greenlets", done.stdout, re.M)
    assert [name for name, *_ in rows] == ["gevent ThreadPool", "seqserve NativePool"], done.stdout
    assert all(float(alone) > 0 and float(many) > 0 for _, alone, many in rows)
    runs = re.findall(
        r"^64x50 run, pool of (\d) thread\(s\): +([\d.]+) us CPU per call, served by (\d+) thread", done.stdout, re.M
    )
    assert [int(threads) for threads, *_ in runs] == [1, 2, 4], done.stdout
    assert all(float(cpu) > 0 for _, cpu, _ in runs)
    assert [int(served) for *_, served in runs] == [1, 1, 1], "one call at a time should keep to one thread"
