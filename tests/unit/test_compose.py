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


def test_compose_waits_for_a_database_that_answers_over_tcp():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # The image's init server listens on the socket only: ready means ready over TCP.
    check = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready -h 127.0.0.1" in check
    migrate = services["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "on-failure"
    assert "/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])
    for name in ("gateway", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    header = (ROOT / "docker-compose.yml").read_text().split("\nx-tiergate-env:")[0]
    for variable in ("DATABASE_URL", "TIERGATE_CONFIG", "POSTGRES_PASSWORD"):
        assert variable in header  # the comment says what must be set


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="no docker-compose binary on this machine"
)
def test_compose_config_is_valid():
    """Debian's docker-compose (``.ci/run`` installs it) validates without a Docker engine."""
    subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, check=True, timeout=60)
