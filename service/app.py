"""The app factory and what an app owns: its settings, its log pipeline, its Prometheus metrics and its dataplane
(with the loader thread). All of it is created per app and stopped by `close_app`, so several apps can live in one
process (the tests build many) and a gunicorn worker can shut its app down cleanly (`worker_exit`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

from service import api_repository, api_v1, api_v2, http, observability, ops
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.settings import Settings

EXTENSION = "seqserve"


@dataclass
class Resources:
    settings: Settings
    logs: observability.LogPipeline
    metrics: Metrics
    plane: DataPlane

    def close(self) -> None:
        self.plane.stop()
        self.logs.stop()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Settings come from `SEQSERVE_*` environment variables, then `config` (keys without the prefix)."""
    settings = Settings.from_environ(overrides=config)
    logs = observability.LogPipeline(settings.log_level)
    logs.start()
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    plane = DataPlane(settings, metrics)
    app = Flask("service")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions[EXTENSION] = Resources(settings, logs, metrics, plane)
    http.init_app(app)
    observability.init_app(app, metrics, settings.log_requests)
    for blueprint in (ops.bp, api_v1.bp, api_v2.bp, api_repository.bp):
        app.register_blueprint(blueprint)
    plane.start()
    return app


def resources(app: Flask) -> Resources:
    return app.extensions[EXTENSION]


def close_app(app: Flask) -> None:
    """Stop the app's loader thread and batchers and flush its logs."""
    resources(app).close()


def wait_loaded(app: Flask, timeout: float | None = None) -> bool:
    """Block until the app's first repository scan is done (gunicorn.conf.py uses it before a worker serves)."""
    return resources(app).plane.wait_loaded(timeout)
