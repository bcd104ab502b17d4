"""The shipped Grafana dashboard and Prometheus rules name only metrics tiergate exports.

The exported names come from the real registry (app/metrics.py) with a deployment whose
engine was read, so the collectors that only speak when they have something to say do;
the names in the dashboard and the rules are read out of their PromQL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.metrics import FleetView, Metrics
from app.settings import Settings
from app.upstream.engine_metrics import EngineReading
from app.upstream.router import Router

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tiergate.json"
RULES = ROOT / "deploy" / "prometheus" / "tiergate-rules.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULE_TESTS = Path(__file__).with_name("tiergate-rules-test.yml")

# PromQL's keywords and operators spelled as words (never metric names).
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan", "atan2"}
)  # fmt: skip
# The exposition names of each family type, as prometheus_client writes them.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither a function
    (followed by ``(``), a keyword, a label (in ``{...}`` or a ``by (...)`` list), a duration
    (in ``[...]`` or after ``offset``), nor a Grafana variable."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function (or an aggregation whose labels were removed above)
        if word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def exported_names() -> set[str]:
    """Every series name tiergate's registry can export (gateway and worker alike)."""
    settings = Settings()
    settings.apply_config(
        {
            "models": [
                {
                    "name": "llama",
                    "deployments": [
                        {"name": "gpu", "upstream": "http://gpu:8000/v1", "engine": "vllm"}
                    ],
                }
            ]
        }
    )
    router = Router(settings)
    engine = router.fleets["llama"].deployments[0].engine
    assert engine is not None
    engine.read(EngineReading(1, 1, 0.5), time.monotonic(), 0)  # usable now
    metrics = Metrics()
    metrics.watch_deployments(router.snapshot)
    metrics.render([], 0.0, 0, [], FleetView())
    names: set[str] = set()
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too (rows themselves left out)."""
    out = []
    for panel in board["panels"]:
        out.extend(panel.get("panels", []))
        if panel["type"] != "row":
            out.append(panel)
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_extractor_reads_metric_names_and_nothing_else():
    expr = (
        'sum by (tier, le) (rate(tiergate_request_seconds_bucket{tier=~"flex|default",'
        ' model="$model"}[$__rate_interval] offset 5m)) / on (tier) group_left(model)'
        " max without (instance) (tiergate_queue_depth) * 3600 > bool 1e3"
        ' or absent(tiergate_processes{kind="worker"}) and vector(0)'
    )
    assert metric_names(expr) == {
        "tiergate_request_seconds_bucket",
        "tiergate_queue_depth",
        "tiergate_processes",
    }
    assert metric_names("histogram_quantile(0.99, x_bucket)") == {"x_bucket"}


def test_the_registry_names_its_series_as_the_exposition_does():
    names = exported_names()
    # A counter is exported with _total, a histogram with _bucket/_sum/_count, a gauge as is;
    # a name tiergate does not export is not among them.
    assert {"tiergate_requests_total", "tiergate_request_seconds_bucket"} <= names
    assert "tiergate_queue_oldest_age_seconds" in names and "tiergate_requests" not in names
    assert "tiergate_engine_requests_waiting" in names  # the collectors spoke
    assert "tiergate_nope_total" not in names
    assert "tiergate_deferred_outcomes_total" in names  # a family before any row ended


def test_every_dashboard_query_names_metrics_tiergate_exports():
    exported = exported_names()
    board = dashboard()
    seen: set[str] = set()
    for panel in panels(board):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} reads {unknown}, not exported"
            seen |= names
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":  # Grafana's label_values(<series>, <label>)
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert found, variable["definition"]
            assert metric_names(found.group(1)) <= exported
    # The list: traffic by tier, latency, queue depth and age, batch progress,
    # deployments' health and in-flight calls, tokens and cost, cache hit rate, 429s.
    wanted = {
        "tiergate_requests_total",
        "tiergate_request_seconds_bucket",
        "tiergate_queue_depth",
        "tiergate_queue_oldest_age_seconds",
        "tiergate_batch_lines",
        "tiergate_deployment_state",
        "tiergate_deployment_in_flight",
        "tiergate_tokens_total",
        "tiergate_cost_usd_total",
        "tiergate_cache_total",
        "tiergate_too_many_requests_total",
        "tiergate_processes",
        "tiergate_key_budget_usd",
        "tiergate_deferred_outcomes_total",  # how the workers' deferred rows end
    }
    assert wanted <= seen, wanted - seen
    # The error ratio covers the calls the gateways answered and those the workers ended.
    (ratio,) = [p for p in panels(board) if p["title"] == "Error ratio"]
    assert metric_names(ratio["targets"][0]["expr"]) == {
        "tiergate_requests_total",
        "tiergate_deferred_outcomes_total",
    }


def test_the_dashboard_is_importable_with_a_prometheus_datasource_variable():
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 39
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_every_alert_rule_names_exported_metrics_and_says_how_bad_and_why():
    exported = exported_names()
    found = {}
    for rule in rules():
        name = rule["alert"]
        names = metric_names(str(rule["expr"]))
        assert names and names <= exported, f"{name} reads {names - exported}, not exported"
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        found[name] = names
    # The list: queue age, a deployment out, error rate, budgets, workers gone.
    assert "tiergate_queue_oldest_age_seconds" in found["TiergateQueueAgeHigh"]
    assert "tiergate_deployment_state" in found["TiergateDeploymentOut"]
    assert "tiergate_requests_total" in found["TiergateErrorRateHigh"]
    assert found["TiergateDeferredErrorRateHigh"] == {"tiergate_deferred_outcomes_total"}
    assert "tiergate_key_budget_spent_usd" in found["TiergateBudgetNearlySpent"]
    assert "tiergate_processes" in found["TiergateWorkersGone"]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is absent: Debian's prometheus package is not installed (.ci/run)")
    return path


def test_promtool_accepts_the_rules_and_the_example_configuration():
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout + checked.stderr
    config = subprocess.run(
        [tool, "check", "config", str(EXAMPLE_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_alert_fires_past_its_threshold_and_for_and_not_before():
    """promtool's rule unit tests (tiergate-rules-test.yml): synthetic series of two gateways
    and a worker, each alert quiet before its threshold and its ``for``, firing after."""
    tool = promtool()
    tested = subprocess.run(
        [tool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr
