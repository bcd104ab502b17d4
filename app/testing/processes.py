"""Real servers for tests: the gateway and the mock upstream as their own processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until ``url`` answers 200, failing fast (with the log) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{log.read_text()}")


@dataclass
class Process:
    """A ``tiergate`` subcommand running as a child process, logging to a file."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def base_env(**extra: str) -> dict[str, str]:
    own = ("TIERGATE_", "DATABASE_URL", "DATABASE_DIRECT_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env.update(extra)
    return env


@dataclass
class Gateway:
    """A running ``tiergate serve`` (optionally without its in-process worker)."""

    url: str
    process: Process

    @property
    def api(self) -> str:
        return self.url + "/v1"


def start_gateway(
    *,
    database_url: str,
    config: Path,
    log: Path,
    worker: bool = True,
    port: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Gateway:
    port = port or free_port()
    args = ["serve", "--port", str(port)] + ([] if worker else ["--no-worker"])
    process = Process(
        args,
        base_env(DATABASE_URL=database_url, TIERGATE_CONFIG=str(config), **(env or {})),
        log,
        cwd=cwd,
    ).start()
    url = f"http://127.0.0.1:{port}"
    assert process.proc is not None
    wait_http(url + "/readyz", process.proc, log, START_TIMEOUT_S)
    return Gateway(url=url, process=process)


def start_worker(
    *,
    database_url: str,
    config: Path,
    log: Path,
    concurrency: int = 8,
    metrics_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Process:
    metrics = ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
    return Process(
        ["worker", "--concurrency", str(concurrency), *metrics],
        base_env(DATABASE_URL=database_url, TIERGATE_CONFIG=str(config), **(env or {})),
        log,
    ).start()


def start_metrics_worker(
    *, database_url: str, config: Path, log: Path, concurrency: int = 4
) -> tuple[Process, str]:
    """``tiergate worker`` serving ``/metrics`` on a free port, once that answers; returns the
    process and the metrics URL."""
    port = free_port()
    process = start_worker(
        database_url=database_url,
        config=config,
        log=log,
        concurrency=concurrency,
        metrics_port=port,
    )
    assert process.proc is not None
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url, process.proc, log, START_TIMEOUT_S)
    return process, url


def start_mock_upstream(
    log: Path,
    latency_ms: float = 0.0,
    capacity: int | None = None,
    api: str = "responses",
    engine: str | None = None,
    scheduling_policy: str = "fcfs",
) -> tuple[str, Process]:
    """``tiergate mock-upstream`` on a free port (``engine``: its engine mode); returns its
    base URL once it answers."""
    port = free_port()
    args = ["mock-upstream", "--port", str(port), "--latency-ms", str(latency_ms)]
    args += ["--api", api]
    if capacity:
        args += ["--capacity", str(capacity)]
    if engine is not None:
        args += ["--engine", engine, "--scheduling-policy", scheduling_policy]
    process = Process(args, base_env(), log).start()
    url = f"http://127.0.0.1:{port}"
    assert process.proc is not None
    wait_http(url + "/healthz", process.proc, log, START_TIMEOUT_S)
    return url, process


def create_key(
    database_url: str,
    name: str,
    models: str | None = None,
    *,
    admin: bool = False,
    options: Sequence[str] = (),
) -> str:
    """``tiergate keys create`` (with ``options`` such as ``--rpm 5``): the secret is the last
    line of its output."""
    args = [sys.executable, "-m", "app.cli", "keys", "create", "--name", name, *options]
    if models:
        args += ["--models", models]
    if admin:
        args.append("--admin")
    out = subprocess.run(
        args,
        env=base_env(DATABASE_URL=database_url),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]
