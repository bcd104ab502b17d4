"""The README's SDK example and its batch shell commands run as written against a live
gateway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from app.testing.processes import Gateway
from tests.support.paths import ROOT


def test_readme_python_example_runs(gateway: Gateway, key: str, tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    code = example.group(1).replace("http://127.0.0.1:8080", gateway.url)
    (tmp_path / ".tiergate").mkdir()
    (tmp_path / ".tiergate" / "dev-key").write_text(key + "\n")
    (tmp_path / "example.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "echo: hi",
        "echo: cheap and durable flex",
        "3",
        "echo: streamed",
        "completed echo: later",
        "echo: resumable",
    ]


def test_readme_batch_python_example_polls_until_the_batch_ends(
    gateway: Gateway, key: str, tmp_path: Path
):
    """The Batch API's SDK example, with the client of the first example and the input file
    of the shell block, prints the final status and the results (not ``validating``)."""
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", readme, re.S)
    client = re.search(r"from openai import OpenAI\n.*?\n\)[^\n]*\n", examples[0], re.S)
    batch = next(e for e in examples if "client.batches.create" in e)
    make_input = next(
        b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "> requests.jsonl" in b
    )
    assert client is not None
    subprocess.run(["bash", "-euc", make_input], cwd=tmp_path, check=True, timeout=60)
    (tmp_path / ".tiergate").mkdir()
    (tmp_path / ".tiergate" / "dev-key").write_text(key + "\n")
    code = (client.group(0) + batch).replace("http://127.0.0.1:8080", gateway.url)
    (tmp_path / "batch.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "batch.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "completed 2 of 2", out.stdout
    results = [json.loads(line) for line in lines[1:] if line.strip()]
    assert sorted(r["custom_id"] for r in results) == ["q1", "q2"]


def test_readme_batch_shell_commands_run_as_printed(gateway: Gateway, key: str, tmp_path: Path):
    """The README's Batch API shell blocks, pasted into a terminal beside a checkout."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "requests.jsonl" in b]
    assert len(blocks) == 2 and "tiergate batch status" in blocks[1]
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # `source .venv/...`
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TIERGATE_URL": gateway.url,
        "TIERGATE_API_KEY": key,
    }
    out = subprocess.run(
        ["bash", "-euc", "\n".join(blocks)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["q1", "q2"]
    batch_id = out.stdout.split()[0]
    assert batch_id.startswith("batch_") and "completed" in out.stdout
