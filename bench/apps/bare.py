"""The framework's ceiling: a Flask app under the same gunicorn settings as seqserve that reads the request body
and answers a constant, without parsing, validating or computing anything.

    gunicorn -k gthread -w 2 --threads 4 -b 127.0.0.1:18103 "bench.apps.bare:create_app()"
"""

from __future__ import annotations

from flask import Flask, Response, request

CONSTANT = b'{"ok":true}'


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Response:
        request.get_data()
        return Response(CONSTANT, mimetype="application/json")

    @app.get("/ready")
    def ready() -> Response:
        return Response(CONSTANT, mimetype="application/json")

    return app
