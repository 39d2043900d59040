"""The Grafana dashboard parses, covers the panels docs/operations.md lists (step 9, Grafana),
filters every query on the namespace and run variables, and queries only metrics that the trainer
or the evaluator actually registers (enumerated from their registries, not a list) or that
docs/metrics.md lists as another exporter's (dcgm-exporter, kube-state-metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.chart.render import CHART, REPO

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
METRICS_DOC = REPO / "docs" / "metrics.md"
# PromQL functions and keywords never start with r1v_, DCGM_ or kube_, so every such identifier is a series name.
_SERIES = re.compile(r"\b(r1v_[a-zA-Z0-9_:]+|DCGM_[A-Z0-9_]+|kube_[a-z0-9_]+)")
# Grafana's variables, as the Prometheus tests substitute them.
STAND_INS = {"$__rate_interval": "5m", "$namespace": ".*", "$run": ".*", "$benchmark": ".*", "$job": ".*"}


def _doc_section(title: str) -> str:
    return METRICS_DOC.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def other_exporters_series() -> set[str]:
    """Series of other exporters the docs list (docs/metrics.md, "Other exporters")."""
    return set(re.findall(r"`((?:DCGM_|kube_)\w+)`", _doc_section("Other exporters")))


def exprs(dashboard: dict) -> list[tuple[str, str]]:
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
    suffixes = {"counter": ["_total", "_created"], "gauge": [""],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
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
    return _sample_names(train_registry()) | _sample_names(eval_registry()) | other_exporters_series()


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
    unknown = sorted({(title, name) for title, expr in exprs(dashboard) for name in _SERIES.findall(expr)
                      if name not in registered})
    assert unknown == []


def test_dashboard_covers_what_the_issue_asks_for():
    queried = " ".join(expr for path in DASHBOARDS for _, expr in exprs(json.loads(path.read_text())))
    for needed in ["r1v_train_reward{", "r1v_train_function_reward{", "r1v_train_kl{", "r1v_train_loss{",
                   "r1v_train_completion_length_mean_tokens{", "r1v_train_completion_length_max_tokens{",
                   "r1v_train_completion_truncated_ratio{", "r1v_train_reward_zero_std_ratio{",
                   "r1v_train_clip_ratio{", "r1v_train_entropy_nats{", "rate(r1v_train_tokens_total",
                   "r1v_train_step_duration_seconds_bucket", "rate(r1v_train_rollouts_total",
                   "r1v_train_global_step{", "r1v_train_final_step{", "r1v_train_gpu_memory_peak_bytes",
                   "DCGM_FI_DEV_GPU_UTIL{", "DCGM_FI_DEV_FB_USED{", "r1v_eval_accuracy_ratio",
                   "r1v_eval_checkpoint_step"]:
        assert needed in queried, needed


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_filters_on_the_namespace_and_the_run(path):
    # The run variable reaches GPU panels through $job, the training pods' name prefix, itself
    # read from series filtered on namespace and run.
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"namespace", "run", "job"} <= variables.keys()
    assert "$namespace" in variables["run"]["query"]["query"]
    unfiltered = []
    for title, expr in exprs(dashboard):
        if title in ("variable namespace", "variable run"):
            continue
        # Every selector of a series, not only the expression as a whole.
        for selector in re.findall(r"\b(?:r1v_|DCGM_|kube_)\w+(\{[^}]*\})?", expr):
            if "$namespace" not in selector or not ("$run" in selector or "$job" in selector):
                unfiltered.append((title, expr))
    assert unfiltered == []


def test_the_filter_check_can_fail():
    selector = re.findall(r"\b(?:r1v_|DCGM_|kube_)\w+(\{[^}]*\})?", 'sum(r1v_train_kl{run=~"$run"}) / r1v_train_loss')
    assert selector == ['{run=~"$run"}', ""]


def test_the_dashboard_uid_is_not_the_one_every_release_used_to_ship():
    # r1v-grpo shipped once per release; the chart now sets monitoring.dashboard.uid over it.
    assert all(json.loads(p.read_text())["uid"] != "r1v-grpo" for p in DASHBOARDS)


def test_registry_check_is_not_vacuous(registered):
    # Guard the guard: the derivation must yield the real exposed names, e.g. counters' _total.
    assert {"r1v_train_rollouts_total", "r1v_train_step_duration_seconds_bucket",
            "r1v_eval_accuracy_ratio"} <= registered


def test_every_query_is_valid_promql(tmp_path):
    # promtool parses each expression as a recording rule; Grafana's variables get stand-ins first.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make tools installs it)")
    stand_ins = STAND_INS
    rules = []
    for path in DASHBOARDS:
        for i, (_, expr) in enumerate(exprs(json.loads(path.read_text()))):
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


def test_the_job_variable_cuts_rank_zeros_pod_to_the_training_job_name():
    (dashboard,) = [json.loads(p.read_text()) for p in DASHBOARDS]
    (job,) = [v for v in dashboard["templating"]["list"] if v["name"] == "job"]
    pattern = re.compile(job["regex"].strip("/"))  # a JavaScript regex; this one reads the same in Python
    assert pattern.match("exp-1-r1v-master-0").group(1) == "exp-1-r1v"  # PyTorchJob: JOB-master-0
    assert pattern.match("exp-node-0-0-x7k2p").group(1) == "exp"  # Trainer v2 (JobSet): JOB-node-0-0-HASH
    assert pattern.match("exp-eval-x7k2p") is None
