"""``tiergate batch submit/list/status`` against a live gateway, as a person would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app.testing.processes import Gateway, base_env
from tests.e2e.test_batches import chat_line, jsonl
from tests.support.paths import ROOT


def tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def submit(
    gateway: Gateway, key: str, source: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """``tiergate batch submit`` of ``source`` (chat completions) to ``gateway``."""
    return tiergate(
        "batch",
        "submit",
        str(source),
        "--endpoint",
        "/v1/chat/completions",
        *options,
        "--url",
        gateway.url,
        "--api-key",
        key,
    )


def test_submit_waits_with_progress_and_downloads(gateway: Gateway, key: str, tmp_path: Path):
    source = tmp_path / "in.jsonl"
    lines = [chat_line(f"cli-{i}", f"cli {i}") for i in range(25)]
    source.write_bytes(jsonl([*lines, chat_line("cli-bad", "mock:status=400")]))
    out = tmp_path / "out.jsonl"
    run = submit(gateway, key, source, "--output", str(out), "--allow-failures")
    assert run.returncode == 0, run.stderr
    batch_id = run.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("batch_")
    assert "upload" in run.stderr and "line" in run.stderr  # the progress bars
    assert "completed" in run.stderr and "25/26 done, 1 failed" in run.stderr
    got = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert sorted(got) == sorted(f"cli-{i}" for i in range(25))
    errors = tmp_path / "out.errors.jsonl"
    assert [json.loads(line)["custom_id"] for line in errors.read_text().splitlines()] == [
        "cli-bad"
    ]

    listed = tiergate("batch", "list", "--url", gateway.url, "--api-key", key)
    assert batch_id in listed.stdout
    shown = tiergate("batch", "status", batch_id, "--url", gateway.url, "--api-key", key)
    assert "completed" in shown.stdout and "output_file_id" in shown.stdout


def test_submit_fails_when_lines_failed_unless_allowed(gateway: Gateway, key: str, tmp_path: Path):
    source = tmp_path / "some-fail.jsonl"
    lines = [chat_line("fine", "fine"), chat_line("bad-1", "mock:status=400")]
    source.write_bytes(jsonl([*lines, chat_line("bad-2", "mock:status=404")]))
    out = tmp_path / "out.jsonl"
    run = submit(gateway, key, source, "--output", str(out))
    assert run.returncode == 1, run.stderr
    batch_id = run.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("batch_")  # the batch itself completed ...
    assert "completed" in run.stderr and "1/3 done, 2 failed" in run.stderr
    assert "2 of 3 lines failed" in run.stderr and "--allow-failures" in run.stderr
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["fine"]
    errors = tmp_path / "out.errors.jsonl"  # ... and its files were written all the same
    assert len(errors.read_text().splitlines()) == 2


def test_submit_reports_validation_errors(gateway: Gateway, key: str, tmp_path: Path):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"{broken\n")
    run = submit(gateway, key, source, "--wait")
    assert run.returncode == 1
    assert "line 1: invalid_json_line" in run.stderr


def test_bad_key_is_a_clear_error(gateway: Gateway, tmp_path: Path):
    run = tiergate("batch", "list", "--url", gateway.url, "--api-key", "tg-wrong")
    assert run.returncode != 0 and "HTTP 401" in run.stderr


def test_a_batch_that_failed_validation_writes_no_output(
    gateway: Gateway, key: str, tmp_path: Path
):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"{broken\n{also broken\n")
    out = tmp_path / "out.jsonl"
    run = submit(gateway, key, source, "--output", str(out))
    assert run.returncode == 1, run.stderr
    assert "line 1: invalid_json_line" in run.stderr and "line 2: invalid_json_line" in run.stderr
    assert list(tmp_path.iterdir()) == [source]  # no empty output or error file
    assert "output:" not in run.stderr
    assert "no output file written: the batch failed validation" in run.stderr
