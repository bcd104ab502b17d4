"""Config mistakes stop tiergate at start with a message naming the file's line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config_file import ConfigError
from app.settings import Settings

FLEET = """\
models:
  - name: big
    deployments:
      - name: gpu-a
        upstream: http://10.0.0.5:8000/v1
        weight: {weight}
      - name: {second}
        upstream: http://10.0.0.6:8000/v1
    fallbacks: [{fallback}]
  - name: small
    upstream: http://10.0.0.7:8000/v1
    fallbacks: [{back}]
"""


def load(tmp_path: Path, **values: str) -> Settings:
    fields = {"weight": "2", "second": "gpu-b", "fallback": "small", "back": ""} | values
    path = tmp_path / "tiergate.yaml"
    path.write_text(FLEET.format(**fields))
    return Settings.from_env({"TIERGATE_CONFIG": str(path)})


def test_a_good_fleet_loads(tmp_path: Path):
    big = load(tmp_path).models["big"]
    assert [d.name for d in big.deployments] == ["gpu-a", "gpu-b"]
    assert big.deployments[0].weight == 2 and big.fallbacks == ["small"]


@pytest.mark.parametrize(
    ("values", "line", "words"),
    [
        ({"weight": "0"}, 6, "greater than 0"),
        ({"second": "gpu-a"}, 7, "two deployments are named 'gpu-a'"),
        ({"fallback": "nope"}, 9, "fallback 'nope' is not a model"),
        ({"back": "big"}, 9, "fallbacks form a cycle: big -> small -> big"),
    ],
)
def test_mistakes_name_their_line(tmp_path: Path, values: dict[str, str], line: int, words: str):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **values)
    message = str(caught.value)
    assert f"tiergate.yaml line {line}" in message and words in message


def test_yaml_syntax_error_names_its_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - name: x\n    upstream: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        Settings.from_env({"TIERGATE_CONFIG": str(path)})


def test_serve_stops_with_the_message_and_no_traceback(tmp_path: Path):
    path = tmp_path / "tiergate.yaml"
    path.write_text(FLEET.format(weight="-1", second="gpu-b", fallback="small", back=""))
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env={"TIERGATE_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "line 6 (models[0].deployments[0].weight)" in done.stderr
    assert "Traceback" not in done.stderr


CHAT = """\
models:
  - name: local
    api: {api}
    max_tokens_field: {field}
    deployments:
      - name: old
        upstream: http://10.0.0.5:8000/v1
      - name: new
        upstream: http://10.0.0.6:8000/v1
        api: responses
        max_tokens_field: {deployment_field}
"""


def load_chat(tmp_path: Path, **values: str) -> Settings:
    fields = {"api": "chat", "field": "max_tokens", "deployment_field": "max_completion_tokens"}
    path = tmp_path / "tiergate.yaml"
    path.write_text(CHAT.format(**(fields | values)))
    return Settings.from_env({"TIERGATE_CONFIG": str(path)})


def test_api_and_token_field_per_model_and_deployment(tmp_path: Path):
    from app.upstream.deployment import Deployment

    settings = load_chat(tmp_path)
    model = settings.models["local"]
    old, new = (Deployment.of(model, d, settings.limits.health) for d in model.deployments)
    assert (old.speaks_chat, old.token_field) == (True, "max_tokens")
    assert (new.speaks_chat, new.token_field) == (False, "max_completion_tokens")
    assert model.speaks_chat() and model.speaks_chat("old") and not model.speaks_chat("new")


@pytest.mark.parametrize(
    ("values", "line", "words"),
    [
        ({"api": "chatty"}, 3, "'responses' or 'chat'"),
        ({"field": "n_predict"}, 4, "'max_tokens' or 'max_completion_tokens'"),
        ({"deployment_field": "tokens"}, 11, "'max_tokens' or 'max_completion_tokens'"),
    ],
)
def test_chat_settings_mistakes_name_their_line(
    tmp_path: Path, values: dict[str, str], line: int, words: str
):
    with pytest.raises(ConfigError) as caught:
        load_chat(tmp_path, **values)
    message = str(caught.value)
    assert f"tiergate.yaml line {line}" in message and words in message


CACHED = """\
models:
  - name: chat
    upstream: http://10.0.0.5:8000/v1
    cache:
      exact: true
      ignore: [{ignored}]
      semantic:
        embedding_model: {embedder}
        min_similarity: {similarity}
  - name: embed
    upstream: http://10.0.0.6:8000/v1
    endpoints: [{endpoints}]
"""


@pytest.mark.parametrize(
    ("values", "line", "words"),
    [
        ({"ignored": "input"}, 6, "input always decide the answer"),
        ({"embedder": "nope"}, 8, "'nope' is not a model"),
        ({"endpoints": "chat"}, 8, "'embed' does not serve /v1/embeddings"),
        ({"similarity": "1.5"}, 9, "less than or equal to 1"),
    ],
)
def test_cache_mistakes_name_their_line(
    tmp_path: Path, values: dict[str, str], line: int, words: str
):
    fields = {"ignored": "temperature", "embedder": "embed", "similarity": "0.9"}
    fields |= {"endpoints": "embeddings"} | values
    path = tmp_path / "tiergate.yaml"
    path.write_text(CACHED.format(**fields))
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TIERGATE_CONFIG": str(path)})
    message = str(caught.value)
    assert f"tiergate.yaml line {line}" in message and words in message


def test_a_good_cache_loads(tmp_path: Path):
    path = tmp_path / "tiergate.yaml"
    fields = {"ignored": "temperature", "embedder": "embed", "similarity": "0.9"}
    path.write_text(CACHED.format(**fields, endpoints="embeddings"))
    cache = Settings.from_env({"TIERGATE_CONFIG": str(path)}).models["chat"].cache
    assert cache is not None and cache.exact and cache.ignore == ["temperature"]
    assert cache.semantic is not None and cache.semantic.min_similarity == 0.9


MISTAKES = """\
models:
  - name: a
    upstream: htp//oops
  - name: b
    deployments:
      - name: d1
        upstream: ftp://x
        weight: 0
  - name: c
    upstream: https://api.example.com/v1
    fallbacks: [b, nope]
  - name: d
    upstream: mock
    flex_concurrency: -1
limits:
  max_body_bytes: 1
"""


def test_every_mistake_is_reported_with_its_line(tmp_path: Path):
    path = tmp_path / "tiergate.yaml"
    path.write_text(MISTAKES)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TIERGATE_CONFIG": str(path)})
    f = str(path)
    upstream = "upstream must be an http:// or https:// URL with a host (or mock), not"
    assert str(caught.value).splitlines() == [
        "6 mistakes:",
        f"  {f} line 3 (models[0].upstream): {upstream} 'htp//oops'",
        f"  {f} line 7 (models[1].deployments[0].upstream): {upstream} 'ftp://x'",
        f"  {f} line 8 (models[1].deployments[0].weight): Input should be greater than 0",
        f"  {f} line 11 (models[2].fallbacks[1]): fallback 'nope' is not a model",
        f"  {f} line 14 (models[3].flex_concurrency): Input should be greater than or equal to 1",
        f"  {f} line 16 (limits.max_body_bytes): Input should be greater than or equal to 1024",
    ]


@pytest.mark.parametrize(
    "upstream", ["htp//oops", "ftp://x", "http://", "localhost:8000/v1", "mock://elsewhere"]
)
def test_an_upstream_must_be_http_with_a_host_or_mock(tmp_path: Path, upstream: str):
    path = tmp_path / "tiergate.yaml"
    path.write_text(f"models:\n  - name: m\n    upstream: '{upstream}'\n")
    with pytest.raises(ConfigError, match=r"tiergate.yaml line 3 \(models\[0\].upstream\)"):
        Settings.from_env({"TIERGATE_CONFIG": str(path)})


@pytest.mark.parametrize("upstream", ["mock", "http://10.0.0.5:8000/v1/", "https://api.x.com/v1"])
def test_good_upstreams_load(tmp_path: Path, upstream: str):
    path = tmp_path / "tiergate.yaml"
    path.write_text(f"models:\n  - name: m\n    upstream: '{upstream}'\n")
    model = Settings.from_env({"TIERGATE_CONFIG": str(path)}).models["m"]
    assert not model.deployments[0].upstream.endswith("/")
