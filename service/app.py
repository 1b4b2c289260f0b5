"""The app factory and what an app owns: its settings, its log pipeline, its Prometheus metrics and its dataplane
(with the loader thread). All of it is created per app and stopped by `close_app`, so several apps can live in one
process (the tests build many) and a gunicorn worker can shut its app down cleanly (`worker_exit`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask

from service import api_repository, api_v1, api_v2, home, http, inspect_api, observability, ops
from service.codecs import Limits
from service.dataplane import DataPlane
from service.http import EXTENSION
from service.lane import InferenceLane
from service.metrics import Metrics
from service.sequences import open_store
from service.settings import Settings
from service.streams import Streams
from service.tokens import TokenCodec, resolve_key

log = logging.getLogger(__name__)


@dataclass
class Resources:
    settings: Settings
    logs: observability.LogPipeline
    metrics: Metrics
    plane: DataPlane
    streams: Streams
    limits: Limits = field(init=False)  # what one request may hold

    def __post_init__(self) -> None:
        self.limits = Limits(self.settings.max_sequences, self.settings.max_timesteps)

    def close(self) -> None:
        self.plane.stop()
        self.streams.close()
        self.metrics.stop()
        self.logs.stop()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Settings come from `SEQSERVE_*` environment variables, then `config` (keys without the prefix)."""
    settings = Settings.from_environ(overrides=config)
    logs = observability.LogPipeline(settings.log_level)
    logs.start()
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    metrics.start()
    plane = DataPlane(settings, metrics)
    app = Flask("service", static_folder=None)  # the home page's blueprint serves service/static
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    res = app.extensions[EXTENSION] = Resources(settings, logs, metrics, plane, _streams(settings, plane, metrics))
    http.init_app(app)
    recorder = observability.RequestRecorder(metrics, logs, settings.log_requests)
    observability.init_app(app, recorder)
    if settings.fast_path:
        app.wsgi_app = InferenceLane(app.wsgi_app, res, recorder)  # type: ignore[method-assign]
    for blueprint in (ops.bp, home.bp, api_v1.bp, api_v2.bp, api_repository.bp):
        app.register_blueprint(blueprint)
    inspect_api.init_app(app, settings, plane.root)
    plane.start()
    return app


def _streams(settings: Settings, plane: DataPlane, metrics: Metrics) -> Streams:
    folder = Path(settings.state_dir) if settings.state_dir else None
    key, generated = resolve_key(settings.state_key, folder)
    if generated:
        log.warning(
            "SEQSERVE_STATE_KEY is not set: stream state tokens are signed with a random key that dies with this "
            "server; replicas behind one address must share a key (set SEQSERVE_STATE_KEY on each)"
        )
    store = open_store(settings.sequence_store, folder, settings.sequence_idle_s)
    return Streams(plane, TokenCodec(key, settings.state_ttl), store, metrics)


def resources(app: Flask) -> Resources:
    return app.extensions[EXTENSION]


def close_app(app: Flask) -> None:
    """Stop the app's loader thread and batchers and flush its logs."""
    resources(app).close()


def wait_loaded(app: Flask, timeout: float | None = None) -> bool:
    """Block until the app's first repository scan is done (gunicorn.conf.py uses it before a worker serves)."""
    return resources(app).plane.wait_loaded(timeout)
