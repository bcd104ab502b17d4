"""The settings object and the YAML config format."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import MOCK_UPSTREAM, Settings
from app.upstream.deployment import Deployment


def test_defaults_have_the_mock_model():
    settings = Settings.from_env({})
    assert settings.models["mock"].upstream == MOCK_UPSTREAM
    assert settings.database_url is None
    assert settings.home == Path(".tiergate").resolve()


def test_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MY_KEY", "sk-123")
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  - {name: big, upstream: 'http://h:8000/v1/', upstream_model: llama, "
        "api_key_env: MY_KEY, flex_concurrency: 3}\n"
        "limits: {max_body_bytes: 2048}\n"
    )
    settings = Settings.from_env({"TIERGATE_CONFIG": str(path), "DATABASE_URL": "postgresql://x/y"})
    big = settings.models["big"]
    (default,) = big.deployments
    assert (default.name, default.upstream, default.upstream_model, big.flex_concurrency) == (
        "default",
        "http://h:8000/v1",
        "llama",
        3,
    )
    assert Deployment.of(big, default, settings.limits.health).headers() == {
        "authorization": "Bearer sk-123"
    }
    assert settings.limits.max_body_bytes == 2048
    assert "mock" in settings.models
    assert settings.database_url == "postgresql://x/y"


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        Settings().apply_config({"modles": []})
    with pytest.raises(ValueError):
        Settings().apply_config({"models": [{"name": "x", "upstream": "u", "colour": "red"}]})
