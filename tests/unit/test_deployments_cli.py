"""``tiergate deployments``: each deployment's executor and its open provider jobs, as a
table and as JSON (no database: the rows the store would return are given)."""

from __future__ import annotations

import json

from app.cli.deployments import as_json, as_text
from app.settings import Settings
from app.store.upstream_jobs import OpenJobs

CONFIG = {
    "models": [
        {
            "name": "big",
            "deployments": [
                {"name": "plain", "upstream": "http://10.0.0.5:8000/v1"},
                {"name": "cheap", "upstream": "http://10.0.0.6:8000/v1", "executor": "flex"},
                {
                    "name": "bulk",
                    "upstream": "https://api.example/v1",
                    "executor": "batch",
                    "flex": {"timeout_s": 600},
                },
            ],
        },
        {
            "name": "claude",
            "deployments": [
                {
                    "name": "anthropic",
                    "upstream": "https://api.anthropic.example/v1",
                    "executor": "batch",
                    "batch": {"api": "anthropic", "fallback": "flex"},
                }
            ],
        },
    ]
}
VIEW = {
    "id": "gw_1",
    "kind": "gateway",
    "last_seen_at": "2026-12-07 12:00:00+00",
    "deployments": [
        {"model": "big", "deployment": "plain", "state": "healthy", "in_flight": 2, "calls": 9},
    ],
}


def settings() -> Settings:
    s = Settings()
    s.apply_config(CONFIG)
    return s


JOBS = [
    OpenJobs("big", "bulk", submitting=1, running=2, rows=1500, oldest_running_s=125.4),
    OpenJobs("gone", "old", submitting=0, running=1, rows=3, oldest_running_s=7.0),
]


def test_the_table_shows_each_executor_and_the_open_jobs() -> None:
    lines = as_text(settings(), [VIEW], JOBS).splitlines()
    assert lines[0] == "1 live process(es) reporting"
    assert lines[1].split()[:4] == ["MODEL", "DEPLOYMENT", "WHERE", "EXECUTOR"]
    by_name = {line.split()[1]: line for line in lines[2 : lines.index("")]}
    assert "  direct  " in by_name["plain"] and "healthy" in by_name["plain"]
    assert "  flex (900 s)  " in by_name["cheap"]
    assert "  batch openai → flex  " in by_name["bulk"]
    # Anthropic has no flex tier: its rows that cannot wait for a job run direct.
    assert "  batch anthropic → direct  " in by_name["anthropic"]
    jobs = lines[lines.index("Open provider jobs (Batch API)") + 1 :]
    assert jobs[0].split() == ["MODEL", "DEPLOYMENT", "SUBMITTING", "RUNNING", "ROWS", "OLDEST",
                               "RUNNING"]  # fmt: skip
    rows = {line.split()[1]: line.split()[2:] for line in jobs[1:]}
    assert rows == {
        "bulk": ["1", "2", "1,500", "2m", "5s"],
        "anthropic": ["0", "0", "0", "-"],  # a batch deployment without open jobs
        "old": ["0", "1", "3", "7s"],  # a deployment no longer configured still has a job
    }


def test_without_batch_deployments_or_jobs_there_is_no_jobs_table() -> None:
    s = Settings()
    big = CONFIG["models"][0]
    s.apply_config({"models": [big | {"deployments": big["deployments"][:2]}]})  # type: ignore[index,operator]
    text = as_text(s, [], [])
    assert "Open provider jobs" not in text and "no process reporting" in text


def test_json_has_the_same_facts() -> None:
    shown = json.loads(json.dumps(as_json(settings(), [VIEW], JOBS)))
    assert [p["id"] for p in shown["processes"]] == ["gw_1"]
    by_name = {d["deployment"]: d for d in shown["deployments"]}
    assert by_name["plain"]["executor"] == "direct" and by_name["plain"]["jobs"] is None
    assert by_name["plain"]["in_flight"] == 2 and by_name["plain"]["executor_config"] is None
    assert by_name["cheap"]["executor_text"] == "flex (900 s)"
    assert by_name["cheap"]["executor_config"] == {"timeout_s": 900.0}
    bulk = by_name["bulk"]
    assert bulk["executor"] == "batch" and bulk["executor_config"]["fallback"] == "flex"
    assert bulk["jobs"] == {"submitting": 1, "running": 2, "rows": 1500, "oldest_running_s": 125.4}
    assert by_name["anthropic"]["jobs"] == {
        "submitting": 0,
        "running": 0,
        "rows": 0,
        "oldest_running_s": None,
    }
    assert shown["unconfigured_jobs"] == [
        {"model": "gone", "deployment": "old", "submitting": 0, "running": 1, "rows": 3,
         "oldest_running_s": 7.0}
    ]  # fmt: skip
