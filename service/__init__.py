"""The seqserve inference service: a Flask app factory for gunicorn (`service:create_app()`).

Layers, as MLServer draws them: `codecs` (wire <-> numpy) with `schemas` (marshmallow), `runtime` (one onnxruntime
session, no HTTP), `batching`, `dataplane` (what both APIs share), and thin endpoints in `api_v1`, `api_v2`, `ops`;
`app` builds an app and owns its resources. The gunicorn master imports `service.settings` only, so this package
imports nothing at import time: Flask, onnxruntime and the rest load in the workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Settings come from `SEQSERVE_*` environment variables, then `config` (keys without the prefix)."""
    from service.app import create_app as factory

    return factory(config)
