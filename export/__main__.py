"""`python -m export RUN_DIR --repository model_repository --name NAME`: publish a verified model version."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export import artifacts, parity
from export.pipeline import export_run
from models import checkpoint

log = logging.getLogger("export")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument("run_dir", type=Path, help="a run folder written by `python -m models.train`")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--name", required=True, help="model name (letters, digits, '_', '.', '-')")
    p.add_argument("--opset", type=int, default=artifacts.DEFAULT_OPSET)
    p.add_argument("--tolerance", type=float, default=parity.DEFAULT_TOLERANCE, help="max |Δprobability|")
    args = p.parse_args(argv)
    if not (args.run_dir / checkpoint.CHECKPOINT_FILE).is_file():
        log.error("%s: no %s; pass a run folder of `python -m models.train`", args.run_dir, checkpoint.CHECKPOINT_FILE)
        return 2
    try:
        version, path = export_run(args.run_dir, args.repository, args.name, args.opset, args.tolerance)
    except (parity.ParityError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:  # the exporter's own failures (e.g. an opset it cannot target): nothing was published
        log.error("export failed, nothing was published: %s: %s", type(exc).__name__, exc)
        return 1
    log.info("published %s version %d at %s", args.name, version, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
