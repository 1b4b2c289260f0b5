"""`GET /`: the service's home page. Every model and version with its manifest (architecture, size, features,
classes, held-out metrics with the confusion matrix and per-class report), and a playground that inspects one
sequence through `POST /v1/models/<name>/versions/<v>/inspect`.

The page is one Jinja template (templates/home.html, rendered here from the dataplane's loaded manifests), one
script and one style sheet (static/home.js, static/home.css), and Plotly.js for the charts, served from the pinned
`plotly` package (`plotly/package_data/plotly.min.js`), not a CDN: deployments are often offline. The script turns
a pasted or uploaded CSV into the endpoint's JSON body and leaves every check to the service, so a malformed file
is answered with the service's own located message.

`static/examples/` holds real BasicMotions recordings from the test split of the demo model's run
(`python -m models.demo` stream, seed 0; blocks 4 and 19 of configs/demo.toml's split): recording 23 (walking),
75 (badminton), and 41 then 56 (standing, then running, adjacent in the stream). Each offers itself for the models
whose features its header names.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, render_template, send_from_directory

from modelrepo.manifest import Manifest
from service.dataplane import DataPlane, ModelVersion
from service.errors import NotFound, NotReady
from service.http import dataplane
from service.openapi import Reply, documented

bp = Blueprint("home", __name__, static_folder="static", static_url_path="/static", template_folder="templates")
HTML = Reply("the page", {"text/html": {"type": "string"}})
EXAMPLES = (
    ("walking.csv", "Walking (held-out recording 23)"),
    ("badminton.csv", "Badminton (held-out recording 75)"),
    ("standing-then-running.csv", "Standing, then running (held-out recordings 41 and 56)"),
)


@bp.get("/")
@documented("The home page (HTML): models, versions, manifests and the inspection playground", {200: HTML})
def index() -> str:
    """The home page (HTML): models, versions and manifests, and the inspection playground."""
    models = catalogue(dataplane())
    ready = [v for m in models for v in m["versions"] if v["ready"]]
    return render_template("home.html", models=models, playground=playground(ready), examples=examples())


@bp.get("/vendor/plotly.min.js")
@documented(
    "Plotly.js, served from the installed plotly package (no CDN)",
    {200: Reply("the script", {"text/javascript": {"type": "string"}})},
    errors=(404,),
)
def plotly_js() -> Response:
    """Plotly.js, from the installed `plotly` package (the version its wheel pins)."""
    return send_from_directory(plotly_folder(), "plotly.min.js", max_age=86_400)


@cache
def plotly_folder() -> Path:
    """`plotly/package_data`, found without importing plotly (its Python side is not needed)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("plotly.min.js: the `plotly` package is not installed (pip install plotly)")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data"


@cache
def examples() -> tuple[dict[str, Any], ...]:
    """The bundled recordings: file, title and the columns of its header (read once, on the first page view)."""
    folder = Path(bp.static_folder or "") / "examples"
    found = []
    for file, title in EXAMPLES:
        with (folder / file).open() as f:
            columns = f.readline().strip().split(",")
        found.append({"file": file, "title": title, "columns": columns})
    return tuple(found)


def catalogue(plane: DataPlane) -> list[dict[str, Any]]:
    """Models (name, versions) as the page shows them; versions that failed or are loading say so."""
    models = []
    for name in plane.names():
        try:
            versions = plane.versions(name)
        except (NotFound, NotReady):  # removed (or not scanned yet) between the two calls
            continue
        models.append({"name": name, "versions": [_version(v) for v in reversed(versions)]})
    return models


def _version(version: ModelVersion) -> dict[str, Any]:
    out: dict[str, Any] = {**version.describe(), "name": version.name, "ready": version.loaded is not None}
    if version.loaded is not None:
        out.update(_manifest(version.loaded.manifest))
    return out


def _manifest(m: Manifest) -> dict[str, Any]:
    config = m.model
    return {
        "cell": config.cell,
        "layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "bidirectional": config.bidirectional,
        "head": config.head,
        "parameter_count": m.parameter_count,
        "features": list(m.feature_names),
        "classes": list(m.class_names),
        "created": m.created,
        "training": m.training,
        "metrics": m.metrics,
        "confusion": _confusion(m.metrics.get("confusion_matrix"), m.class_names),
        "report": _report(m.metrics.get("per_class"), m.class_names),
    }


def _confusion(matrix: Any, classes: tuple[str, ...]) -> list[list[tuple[int, float]]] | None:
    """Rows (true class) of (count, share of the row), or None when the manifest carries no matrix."""
    if not isinstance(matrix, list) or len(matrix) != len(classes):
        return None
    rows = []
    for row in matrix:
        total = sum(row) or 1
        rows.append([(int(v), v / total) for v in row])
    return rows


def _report(report: Any, classes: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """Per class, then the macro and weighted averages: precision, recall, F1, support (scikit-learn's report)."""
    if not isinstance(report, dict):
        return None
    names = [*classes, "macro avg", "weighted avg"]
    return [{"name": n, **report[n]} for n in names if isinstance(report.get(n), dict)]


def playground(ready: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the script needs of each ready version (embedded in the page as JSON)."""
    keys = ("name", "version", "features", "classes", "head", "cell", "bidirectional", "layers")
    return [{k: v[k] for k in keys} for v in ready]
