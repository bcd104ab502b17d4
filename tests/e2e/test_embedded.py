"""The newcomer's path: ``tiergate serve`` with no DATABASE_URL, embedded Postgres, dev key.

Also: a serve killed with SIGKILL (and even its Postgres killed with it) does not block
the next start, and the data survives.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.store.embedded import EmbeddedPostgres
from app.testing.processes import (
    START_TIMEOUT_S,
    Process,
    base_env,
    free_port,
    wait_http,
)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    server = EmbeddedPostgres(home)
    server.start()
    server.stop()


def serve(home: Path, port: int, log: Path) -> Process:
    process = Process(["serve", "--port", str(port)], base_env(TIERGATE_HOME=str(home)), log)
    process.start()
    assert process.proc is not None
    wait_http(f"http://127.0.0.1:{port}/readyz", process.proc, log, START_TIMEOUT_S)
    return process


def keys_create(home: Path, log: Path) -> str:
    import subprocess
    import sys

    from tests.support.paths import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "second"],
        cwd=ROOT,
        env=base_env(TIERGATE_HOME=str(home)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


def test_embedded_serve_survives_sigkill(home: Path, tmp_path: Path):
    port = free_port()
    first = serve(home, port, tmp_path / "serve-1.log")
    try:
        dev_key = (home / "dev-key").read_text().strip()
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=dev_key, max_retries=0, timeout=30
        )
        flex = client.responses.create(model="mock", input="first run", service_tier="flex")
        assert flex.output_text == "echo: first run" and flex.service_tier == "flex"
        # `tiergate keys create` finds the same embedded server beside a running serve.
        second_key = keys_create(home, tmp_path / "keys.log")
        assert client.with_options(api_key=second_key).models.list().data
    finally:
        first.kill()

    # Kill the embedded Postgres too: a stale postmaster.pid must not block the restart.
    pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)

    restarted = serve(home, port, tmp_path / "serve-2.log")
    try:
        again = client.responses.retrieve(flex.id)  # the data was reused
        assert again.output_text == "echo: first run"
        assert (home / "dev-key").read_text().strip() == dev_key  # no second dev key
    finally:
        restarted.stop()
