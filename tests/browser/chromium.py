"""Debian's chromium (`apt-get install -y chromium`; `make test` installs it), driven by Playwright for Python. The
browser is the system's, never one Playwright downloads; the helpers here are shared by the tests and by
`python -m tests.browser.screenshot`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What the page drew, read back from the Plotly graph divs (each keeps its traces in `.data`).
DRAWN = """() => ({
  classes: document.getElementById("probabilities").data.map((t) => t.name),
  probabilities: document.getElementById("probabilities").data.map((t) => t.y),
  gates: [...document.querySelectorAll("#gates .gate")].map((d) => ({
    name: d.dataset.name, title: d.layout.title.text, z: d.data[0].z,
  })),
  memory: document.getElementById("memory").data[0].customdata,
  horizon: document.getElementById("horizon").data[0].y,
  layers: [...document.querySelectorAll("#layer option")].map((o) => o.textContent),
  curl: document.getElementById("curl").textContent,
})"""


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium (make test installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_drawn(page: Page, timeout_ms: float = 60_000) -> dict[str, Any]:
    """Wait for an inspection to be drawn (the status line reports its timesteps), then read the plots back."""
    page.wait_for_function(
        "() => document.getElementById('status').textContent.includes('timesteps in')", timeout=timeout_ms
    )
    return page.evaluate(DRAWN)


def inspect_example(page: Page, model: str, version: int, example: str) -> dict[str, Any]:
    """Pick a model version and a bundled recording (which runs the inspection), and read the plots back."""
    page.select_option("#model", label=f"{model} · version {version}")
    page.select_option("#example", value=example)
    return wait_drawn(page)
