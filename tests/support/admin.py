"""What an admin runs beside a gateway in tests: ``tiergate deployments --json`` and a signed-in
dashboard session."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from app.testing.processes import base_env


def deployments_json(database_url: str, config: Path) -> dict[str, Any]:
    """``tiergate deployments --json`` as an admin runs it against ``database_url``."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "deployments", "--json"],
        env=base_env(DATABASE_URL=database_url, TIERGATE_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown: dict[str, Any] = json.loads(out.stdout)
    return shown


@contextlib.contextmanager
def dashboard_session(gateway_url: str, admin_key: str) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the dashboard with ``admin_key``."""
    with httpx.Client(base_url=gateway_url, follow_redirects=False) as http:
        http.get("/dashboard/sign-in")
        signed = http.post(
            "/dashboard/sign-in",
            data={"key": admin_key, "csrf": http.cookies["tiergate_csrf"]},
            headers={"origin": gateway_url},
        )
        assert signed.status_code == 303, signed.text
        yield http
