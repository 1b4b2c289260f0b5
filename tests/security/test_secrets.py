"""Secrets (the admin token, the state key, and any secret setting added later) never appear in a repr, a log line
or an answer. Generic over `Settings.secret_names()`: a new setting named like a secret must be declared with
`secret()`, and is then checked against a real server's startup logs (at DEBUG) and answers like the others."""

from __future__ import annotations

import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.service.conftest import GUNICORN, start_server

SECRET_LIKE = re.compile(r"token|key|secret|password|passwd|credential", re.IGNORECASE)
REQUESTS = ["/ready", "/v1/models", "/openapi.json", "/metrics", "/v2/models/nope", "/v1/models/lstm_step"]


def canaries() -> dict[str, str]:
    """A distinct, recognisable value per secret setting (long enough for any length check)."""
    return {name: f"canary-{name}-{'x' * 24}" for name in Settings.secret_names()}


def test_settings_named_like_secrets_are_secret():
    named = {f.name for f in fields(Settings) if SECRET_LIKE.search(f.name)}
    assert {"admin_token", "state_key"} <= named
    assert set(Settings.secret_names()) == named


def test_repr_and_public_view_hide_secrets():
    values = canaries()
    settings = Settings.from_mapping(values)
    assert [getattr(settings, name) for name in values] == list(values.values())
    shown = f"{settings!r} {settings} {settings.public()}"
    assert [v for v in values.values() if v in shown] == []
    assert all(settings.public()[name] == "***" for name in values)


def test_setting_errors_name_the_variable_not_the_value():
    values = canaries()
    for name, value in values.items():
        typo = name.replace("_", "", 1)
        with pytest.raises(ValueError, match=f"SEQSERVE_{typo.upper()}") as caught:
            Settings.from_mapping({typo: value})
        assert value not in str(caught.value)


def test_a_running_server_logs_and_answers_no_secret(model_repository: Path, tmp_path: Path):
    values = canaries()
    server = start_server(model_repository, tmp_path / "gunicorn.log", log_level="DEBUG", **values)
    try:
        answers = [server.get(path).text for path in REQUESTS]
        answers.append(server.post("/v1/models/lstm_step/predict", data=b"{", headers={"X-Request-ID": "r1"}).text)
    finally:
        assert server.stop() == 0
    logs = server.logs()
    assert '"level":"DEBUG"' in logs or "[DEBUG]" in logs  # the most talkative level was on
    assert [v for v in values.values() if v in logs] == []
    assert [v for v in values.values() if any(v in a for a in answers)] == []


def test_a_server_refusing_its_settings_does_not_echo_secrets(tmp_path: Path):
    """The master stops on a bad setting; what it prints names the variable only."""
    values = canaries()
    env = {f"SEQSERVE_{k.upper()}": v for k, v in values.items()}
    env.update({"SEQSERVE_WORKERS": "many", "PATH": "/usr/bin:/bin"})
    done = subprocess.run(
        [GUNICORN, "--config", "gunicorn.conf.py", "service:create_app()"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "SEQSERVE_WORKERS: cannot read 'many' as int" in output
    assert [v for v in values.values() if v in output] == []
