"""`python -m tests.browser.screenshot REPO --model NAME --example FILE --out docs/inspect-page.png`: the home page
with a bundled recording inspected, photographed in Debian's chromium against a real gunicorn, as the tests run it."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.browser.chromium import chromium, inspect_example
from tests.service.conftest import start_server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.browser.screenshot", description=__doc__.split("\n\n")[0])
    p.add_argument("repository", type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--example", default="standing-then-running.csv", help="a file of service/static/examples")
    p.add_argument("--out", type=Path, default=Path("docs/inspect-page.png"))
    p.add_argument("--width", type=int, default=1400)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(args.repository.resolve(), Path(folder) / "gunicorn.log")
        try:
            with chromium() as browser:
                page = browser.new_page(viewport={"width": args.width, "height": 900}, base_url=server.url)
                page.goto("/")
                drawn = inspect_example(page, args.model, args.version, args.example)
                page.wait_for_timeout(500)  # Plotly's transitions
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
        finally:
            server.stop()
    print(f"{args.out}: {args.model} version {args.version} on {args.example}, {len(drawn['horizon'])} timesteps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
