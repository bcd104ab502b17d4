"""docker-compose.yml stays in step with the CLI (and is valid, where a compose tool exists)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from app.cli.main import build_parser
from tests.support.paths import ROOT


def test_compose_services_run_real_cli_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "gateway", "worker"} <= set(services)
    parser = build_parser()
    for name in ("migrate", "gateway", "worker", "mock-upstream"):
        parser.parse_args(services[name]["command"])  # exits on an unknown flag
    assert services["gateway"]["environment"]["DATABASE_URL"].startswith("postgresql://")


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="no docker-compose binary on this machine"
)
def test_compose_config_is_valid():
    subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, check=True, timeout=60)
