"""The README's SDK example runs as written against a live gateway."""

from __future__ import annotations

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
