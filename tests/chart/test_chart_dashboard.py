"""The Grafana dashboard parses, covers the panels the issue lists, and queries only metrics that
the trainer or the evaluator actually registers (enumerated from their registries, not a list)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.chart.r1v_chart_helpers import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# PromQL functions and keywords never start with r1v_, so every r1v_ identifier is a series name.
_SERIES = re.compile(r"\b(r1v_[a-zA-Z0-9_:]+)")


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    found = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                found.append((p["title"], t["expr"]))
            walk(p.get("panels", []))
    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            found.append((f"variable {var['name']}", q["query"]))
    return found


def _sample_names(registry) -> set[str]:
    """Every series name a family can expose, derived from its type (labelled families have no samples yet)."""
    suffixes = {"counter": ["_total", "_created"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "summary": ["", "_sum", "_count", "_created"], "info": ["_info"], "stateset": [""], "enum": [""],
                "gaugehistogram": ["_bucket", "_gsum", "_gcount"], "unknown": [""]}
    names = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


@pytest.fixture(scope="module")
def registered() -> set[str]:
    # The code's own registries: r1v_job.metrics and eval_job.metrics each expose new_registry().
    from eval_job.metrics import new_registry as eval_registry
    from r1v_job.metrics import new_registry as train_registry
    return _sample_names(train_registry()) | _sample_names(eval_registry())


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_parses_with_unique_panel_ids(path):
    dashboard = json.loads(path.read_text())
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p["id"])
            walk(p.get("panels", []))
    walk(dashboard["panels"])
    assert dashboard["title"] and dashboard["uid"]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_metric_is_registered_by_the_code(path, registered):
    dashboard = json.loads(path.read_text())
    unknown = sorted({(title, name) for title, expr in _exprs(dashboard) for name in _SERIES.findall(expr)
                      if name not in registered})
    assert unknown == []


def test_dashboard_covers_what_the_issue_asks_for():
    queried = " ".join(expr for path in DASHBOARDS for _, expr in _exprs(json.loads(path.read_text())))
    for needed in ["r1v_train_reward{", "r1v_train_kl{", "r1v_train_loss{", "r1v_train_completion_length_tokens{",
                   "r1v_train_step_duration_seconds_bucket", "rate(r1v_train_rollouts_total",
                   "r1v_train_gpu_memory_allocated_bytes", "r1v_eval_accuracy_ratio", "r1v_eval_checkpoint_step"]:
        assert needed in queried, needed


def test_registry_check_is_not_vacuous(registered):
    # Guard the guard: the derivation must yield the real exposed names, e.g. counters' _total.
    assert {"r1v_train_rollouts_total", "r1v_train_step_duration_seconds_bucket",
            "r1v_eval_accuracy_ratio"} <= registered


def test_every_query_is_valid_promql(tmp_path):
    # promtool parses each expression as a recording rule; Grafana's variables get stand-ins first.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make tools installs it)")
    stand_ins = {"$__rate_interval": "5m", "$run": ".*", "$benchmark": ".*"}
    rules = []
    for path in DASHBOARDS:
        for i, (_, expr) in enumerate(_exprs(json.loads(path.read_text()))):
            if expr.startswith("label_values("):
                continue  # a Grafana function, not PromQL
            for var, value in stand_ins.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            rules.append({"record": f"r1v:dashboard_query:{i}", "expr": expr})
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
