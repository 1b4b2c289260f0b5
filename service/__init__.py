"""The seqserve inference service: a Flask app factory for gunicorn (`service:create_app()`).

Layers, as MLServer draws them: `codecs` (wire <-> numpy) with `schemas` (marshmallow), `runtime` (one onnxruntime
session, no HTTP), `batching`, `dataplane` (what both APIs share), and thin endpoints in `api_v1`, `api_v2`, `ops`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Config, Flask

from service import api_v1, api_v2, http, observability, ops
from service.dataplane import DataPlane
from service.settings import Settings


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Settings come from `SEQSERVE_*` environment variables, then `config` (keys without the prefix)."""
    app = Flask(__name__)
    env = Config(app.root_path)
    env.from_prefixed_env("SEQSERVE")
    settings = Settings.from_mapping({**env, **(config or {})})
    observability.configure_logging(settings.log_level)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SEQSERVE"] = settings
    plane = DataPlane(settings)
    app.extensions["seqserve"] = plane
    http.init_app(app)
    observability.init_app(app, settings.log_requests)
    for blueprint in (ops.bp, api_v1.bp, api_v2.bp):
        app.register_blueprint(blueprint)
    plane.start()
    return app


def wait_loaded(app: Flask, timeout: float | None = None) -> bool:
    """Block until the app's first repository scan is done (gunicorn.conf.py uses it on reload)."""
    plane: DataPlane = app.extensions["seqserve"]
    return plane.wait_loaded(timeout)
