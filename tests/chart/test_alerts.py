"""The chart's PrometheusRule: valid for promtool and the CRD, every alert documented, and each alert
fires on a synthetic failing series and stays quiet on a healthy one (`promtool test rules`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.chart.render import NAMESPACE, REPO, crd_problems, kinds, only, render

OPERATIONS = REPO / "docs" / "operations.md"
ALERTS = ["R1VTrainingStalled", "R1VTrainingRestarts", "R1VTrainingNotStarted", "R1VTrainerTargetDown",
          "R1VTrainingFailed", "R1VEvaluationFailed", "R1VEvaluationScoresMissing", "R1VEvaluationScoresLost"]
# Rendered only where the evaluator pushes scores.
SCORE_ALERTS = ["R1VEvaluationScoresMissing", "R1VEvaluationScoresLost"]
RUN = "r1v"  # the release's runName and PyTorchJob name in render()'s defaults


def rules(values: dict | None = None) -> list[dict]:
    return only(render(values), "PrometheusRule")["spec"]["groups"][0]["rules"]


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make tools`")
    return subprocess.run([binary, *args], capture_output=True, text=True)


def write_rules(tmp_path, values: dict | None = None):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(only(render(values), "PrometheusRule")["spec"]))
    return path


def test_the_rule_passes_promtool_and_the_crd():
    rule = only(render(), "PrometheusRule")
    assert crd_problems(rule) == []
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == ALERTS


def test_promtool_checks_the_rendered_rules(tmp_path):
    result = promtool("check", "rules", str(write_rules(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS)} rules found" in result.stdout


def test_the_rules_check_can_fail(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum(("}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_every_alert_has_a_summary_a_description_and_a_runbook_section():
    headings = set(re.findall(r"^#### (R1V\w+)", OPERATIONS.read_text(), re.M))
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"]
        assert annotations["runbook"] == f"docs/operations.md, section Alerts > {rule['alert']}"
        assert rule["alert"] in headings
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["labels"]["run"] == RUN


def test_every_expression_is_scoped_to_this_release():
    for rule in rules():
        assert f'namespace="{NAMESPACE}"' in rule["expr"], rule["alert"]
        assert f'run="{RUN}"' in rule["expr"] or f"{RUN}-" in rule["expr"], rule["alert"]


def test_values_set_labels_thresholds_and_the_runbook_url():
    values = {"monitoring": {"labels": {"release": "kps"}, "rules": {
        "labels": {"role": "alert-rules"}, "alertLabels": {"team": "ml"},
        "runbookUrl": "https://example.com/ops.md", "stalled": {"after": "2h"},
        "restarts": {"threshold": 3, "window": "6h"}, "scoresMissing": {"after": "30m"}}}}
    rule = only(render(values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps" and rule["metadata"]["labels"]["role"] == "alert-rules"
    by_name = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert all(r["labels"]["team"] == "ml" for r in by_name.values())
    assert by_name["R1VTrainingStalled"]["annotations"]["runbook_url"] == "https://example.com/ops.md#r1vtrainingstalled"
    assert "> 7200)" in by_name["R1VTrainingStalled"]["expr"]
    assert "[6h]" in by_name["R1VTrainingRestarts"]["expr"] and by_name["R1VTrainingRestarts"]["expr"].endswith(" > 3")
    assert "> 1800)" in by_name["R1VEvaluationScoresMissing"]["expr"]


def test_rules_off_or_monitoring_off_render_no_rule():
    assert "PrometheusRule" not in kinds(render({"monitoring": {"rules": {"enabled": False}}}))
    assert "PrometheusRule" not in kinds(render({"monitoring": {"enabled": False}}))


# --- promtool test rules ------------------------------------------------------------------------
# Series as the chart's monitor and the Pushgateway (honor_labels) deliver them, one sample a minute.
# promtool's clock starts at 0, so time() is the evaluation time in seconds.

TRAIN = f'namespace="{NAMESPACE}", run="{RUN}", pod="{RUN}-master-0", job="{RUN}-metrics"'
EVAL = f'job="r1v-eval", namespace="{NAMESPACE}", run="{RUN}", checkpoint="final"'
RELEASE_CREATED = f'kube_configmap_created{{namespace="{NAMESPACE}", configmap="{RUN}-scripts"}}'


# The master pod recreated once at 20 min (ExitCode): uid a, then uid b, each scheduled (node label set
# after a minute Pending); its container never restarted in place. One restart.
_MASTER = f'namespace="{NAMESPACE}", pod="{RUN}-master-0"'
RUNNING = (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Running"}}', "1x60")
RECREATED = [(f'kube_pod_info{{{_MASTER}, uid="a", node=""}}', "1"),
             (f'kube_pod_info{{{_MASTER}, uid="a", node="n1"}}', "_ 1x19"),
             (f'kube_pod_info{{{_MASTER}, uid="b", node=""}}', "_x20 1"),
             (f'kube_pod_info{{{_MASTER}, uid="b", node="n2"}}', "_x21 1x19"),
             (f'kube_pod_container_status_restarts_total{{{_MASTER}, uid="a", container="pytorch"}}', "0x20"),
             (f'kube_pod_container_status_restarts_total{{{_MASTER}, uid="b", container="pytorch"}}', "_x20 0x20")]


def _case(name, series, alert, at, fires, labels=None):
    return {"name": name, "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                 "exp_alerts": [{"exp_labels": labels}] if fires else []}]}


def _base(alert, **extra):
    return {"severity": "critical" if alert == "R1VTrainingFailed" else "warning", "run": RUN, **extra}


def _annotations_of(rule, labels):
    # Expand the two Prometheus template references the rules use.
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
            for k, v in rule["annotations"].items()}


def cases() -> list[dict]:
    ns, stuck = {"namespace": NAMESPACE}, f"{RUN}-master-0"
    return [
        # Steps every minute for 10 minutes, then none: fires once 30m (+1m for) have passed.
        _case("stalled", [(f"r1v_train_last_progress_timestamp_seconds{{{TRAIN}}}", "0+60x10 600x60"),
                          (f"r1v_train_global_step{{{TRAIN}}}", "0+1x10 10x60"),
                          (f"r1v_train_final_step{{{TRAIN}}}", "100x70")],
              "R1VTrainingStalled", "45m", True, _base("R1VTrainingStalled", **ns)),
        _case("stepping", [(f"r1v_train_last_progress_timestamp_seconds{{{TRAIN}}}", "0+60x70"),
                           (f"r1v_train_global_step{{{TRAIN}}}", "0+1x70"),
                           (f"r1v_train_final_step{{{TRAIN}}}", "100x70")],
              "R1VTrainingStalled", "45m", False),
        # At its final step (saving the model, grace period): not a stall.
        _case("finished", [(f"r1v_train_last_progress_timestamp_seconds{{{TRAIN}}}", "0+60x10 600x60"),
                           (f"r1v_train_global_step{{{TRAIN}}}", "0+1x10 10x60"),
                           (f"r1v_train_final_step{{{TRAIN}}}", "10x70")],
              "R1VTrainingStalled", "45m", False),
        # Another release's run in the same namespace stalls: not this release's alert.
        _case("other run", [(f'r1v_train_last_progress_timestamp_seconds{{namespace="{NAMESPACE}", run="other"}}',
                             "0+60x10 600x60"),
                            (f'r1v_train_global_step{{namespace="{NAMESPACE}", run="other"}}', "0+1x10 10x60"),
                            (f'r1v_train_final_step{{namespace="{NAMESPACE}", run="other"}}', "100x70")],
              "R1VTrainingStalled", "45m", False),
        _case("restarted", [(f'kube_pod_container_status_restarts_total{{namespace="{NAMESPACE}", pod="{stuck}", '
                             'container="pytorch"}', "0x30 1x30")],
              "R1VTrainingRestarts", "40m", True, _base("R1VTrainingRestarts", **ns)),
        # ExitCode (the default) and TrainJob restarts recreate the pod: a new uid, restarts_total from 0.
        _case("recreated", RECREATED, "R1VTrainingRestarts", "40m", True, _base("R1VTrainingRestarts", **ns)),
        # A pod that is scheduled changes its node and IP labels, not its uid: not a restart.
        _case("one pod all along", [(f'kube_pod_info{{namespace="{NAMESPACE}", pod="{stuck}", uid="a", node=""}}',
                                     "1x5"),
                                    (f'kube_pod_info{{namespace="{NAMESPACE}", pod="{stuck}", uid="a", node="n1"}}',
                                     "_x5 1x55"),
                                    # another release's trainer recreated: not this run's
                                    (f'kube_pod_info{{namespace="{NAMESPACE}", pod="other-master-0", uid="c"}}',
                                     "1x20"),
                                    (f'kube_pod_info{{namespace="{NAMESPACE}", pod="other-master-0", uid="d"}}',
                                     "_x20 1x40")],
              "R1VTrainingRestarts", "40m", False),
        _case("no restarts", [(f'kube_pod_container_status_restarts_total{{namespace="{NAMESPACE}", pod="{stuck}", '
                               'container="pytorch"}', "0x60"),
                              # The evaluator's pod and another release's trainer are not this run's training.
                              (f'kube_pod_container_status_restarts_total{{namespace="{NAMESPACE}", '
                               f'pod="{RUN}-eval-x7k2p", container="evaluator"}}', "0x30 1x30"),
                              (f'kube_pod_container_status_restarts_total{{namespace="{NAMESPACE}", '
                               'pod="other-master-0", container="pytorch"}', "0x30 1x30")],
              "R1VTrainingRestarts", "40m", False),
        _case("training failed", [(f'r1v_eval_training_failed{{{EVAL}, reason="PyTorchJobFailed"}}', "1x20")],
              "R1VTrainingFailed", "10m", True, _base("R1VTrainingFailed", reason="PyTorchJobFailed", **ns)),
        _case("training fine", [(f"r1v_eval_last_success_timestamp_seconds{{{EVAL}}}", "60x20")],
              "R1VTrainingFailed", "10m", False),
        _case("evaluation failed", [(f'kube_job_failed{{namespace="{NAMESPACE}", job_name="{RUN}-eval", '
                                     'condition="true"}', "0x10 1x10"),
                                    (f'kube_job_failed{{namespace="{NAMESPACE}", job_name="{RUN}-eval", '
                                     'condition="false"}', "1x10 0x10")],
              "R1VEvaluationFailed", "15m", True, _base("R1VEvaluationFailed", job_name=f"{RUN}-eval", **ns)),
        _case("evaluation running", [(f'kube_job_failed{{namespace="{NAMESPACE}", job_name="{RUN}-eval", '
                                      'condition="true"}', "0x20"),
                                     (f'kube_job_failed{{namespace="{NAMESPACE}", job_name="{RUN}-eval", '
                                      'condition="false"}', "1x20")],
              "R1VEvaluationFailed", "15m", False),
        # Training completes at 61 min (its series ends after the grace period); nothing is pushed.
        _case("scores missing", [(f"r1v_train_completion_timestamp_seconds{{{TRAIN}}}", "0x60 3660x2")],
              "R1VEvaluationScoresMissing", "4h", True, _base("R1VEvaluationScoresMissing", **ns)),
        # Only an earlier run's final scores (same name) sit in the Pushgateway: still missing.
        _case("stale scores", [(f"r1v_train_completion_timestamp_seconds{{{TRAIN}}}", "0x60 3660x2"),
                               (f"r1v_eval_last_success_timestamp_seconds{{{EVAL}}}", "100x300")],
              "R1VEvaluationScoresMissing", "4h", True, _base("R1VEvaluationScoresMissing", **ns)),
        _case("scores pushed", [(f"r1v_train_completion_timestamp_seconds{{{TRAIN}}}", "0x60 3660x2"),
                                (f"r1v_eval_last_success_timestamp_seconds{{{EVAL}}}", "_x90 5400x200")],
              "R1VEvaluationScoresMissing", "4h", False),
        # Still training (the timestamp is 0): never "missing".
        _case("still training", [(f"r1v_train_completion_timestamp_seconds{{{TRAIN}}}", "0x300")],
              "R1VEvaluationScoresMissing", "4h", False),
        # Before the deadline: not yet.
        _case("evaluating", [(f"r1v_train_completion_timestamp_seconds{{{TRAIN}}}", "0x60 3660x2")],
              "R1VEvaluationScoresMissing", "2h", False),
        # The release is 45 min old; its master pod Pending all along (no GPUs, an unbound claim).
        _case("pending", [(RELEASE_CREATED, "0x60"),
                          (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Pending"}}', "1x60"),
                          (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Running"}}', "0x60")],
              "R1VTrainingNotStarted", "45m", True, _base("R1VTrainingNotStarted", **ns)),
        # Kueue never admitted the job: no pod at all.
        _case("not admitted", [(RELEASE_CREATED, "0x60")],
              "R1VTrainingNotStarted", "45m", True, _base("R1VTrainingNotStarted", **ns)),
        _case("started", [(RELEASE_CREATED, "0x60"),
                          (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Pending"}}', "1x10 0x50"),
                          (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Running"}}', "0x10 1x50")],
              "R1VTrainingNotStarted", "45m", False),
        # Training succeeded and its pods were cleaned up: the gate's success says it ran.
        _case("done and cleaned up", [(RELEASE_CREATED, "0x60"),
                                      (f'kube_job_status_succeeded{{namespace="{NAMESPACE}", '
                                       f'job_name="{RUN}-eval-gate"}}', "0x5 1x55")],
              "R1VTrainingNotStarted", "45m", False),
        _case("target down", [(f'up{{{_MASTER}, job="{RUN}-metrics"}}', "1x5 0x30"), RUNNING],
              "R1VTrainerTargetDown", "20m", True, _base("R1VTrainerTargetDown", pod=stuck, **ns)),
        # The trainer finished: its pod Succeeded and the target, if still listed, is not the job's.
        _case("finished target", [(f'up{{{_MASTER}, job="{RUN}-metrics"}}', "1x5 0x30"),
                                  (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Running"}}', "1x5 0x30"),
                                  (f'kube_pod_status_phase{{{_MASTER}, uid="a", phase="Succeeded"}}', "0x5 1x30")],
              "R1VTrainerTargetDown", "20m", False),
        _case("target up", [(f'up{{{_MASTER}, job="{RUN}-metrics"}}', "1x30"), RUNNING,
                            # another release's trainer is down: not this run's
                            (f'up{{namespace="{NAMESPACE}", pod="other-master-0", job="other-metrics"}}', "0x30")],
              "R1VTrainerTargetDown", "20m", False),
        _case("gate failed", [(f'kube_job_failed{{namespace="{NAMESPACE}", job_name="{RUN}-eval-gate", '
                               'condition="true"}', "1x20")],
              "R1VEvaluationFailed", "15m", True, _base("R1VEvaluationFailed", job_name=f"{RUN}-eval-gate", **ns)),
        # Pushed at 5 min, then the gateway restarted without its persistence file at 20 min.
        _case("scores lost", [(f"r1v_eval_last_success_timestamp_seconds{{{EVAL}}}", "_x5 300x15")],
              "R1VEvaluationScoresLost", "45m", True,
              _base("R1VEvaluationScoresLost", checkpoint="final", **ns)),
        # A restart with persistence (or a re-push) within the `for` window: the series is back.
        _case("scores restored", [(f"r1v_eval_last_success_timestamp_seconds{{{EVAL}}}", "_x5 300x15 _x5 300x40")],
              "R1VEvaluationScoresLost", "45m", False),
    ]


def _unit_tests(tmp_path, cases_, values=None):
    rule_file = write_rules(tmp_path, values)
    by_name = {r["alert"]: r for r in rules(values)}
    for case in cases_:
        for test in case["alert_rule_test"]:
            for alert in test["exp_alerts"]:
                alert["exp_annotations"] = _annotations_of(by_name[test["alertname"]], alert["exp_labels"])
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump({"rule_files": [rule_file.name], "evaluation_interval": "1m", "tests": cases_}))
    return promtool("test", "rules", str(path))


def test_each_alert_fires_on_its_failure_and_not_on_healthy_series(tmp_path):
    all_cases = cases()
    assert {c["alert_rule_test"][0]["alertname"] for c in all_cases if c["alert_rule_test"][0]["exp_alerts"]} == \
        set(ALERTS)
    assert {c["alert_rule_test"][0]["alertname"] for c in all_cases if not c["alert_rule_test"][0]["exp_alerts"]} == \
        set(ALERTS)
    result = _unit_tests(tmp_path, all_cases)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_tests_can_fail(tmp_path):
    # The stalled case with a longer threshold no longer fires at 45m: promtool reports the miss.
    stalled = [c for c in cases() if c["name"] == "stalled"]
    result = _unit_tests(tmp_path, stalled, {"monitoring": {"rules": {"stalled": {"after": "2h"}}}})
    assert result.returncode != 0
    assert "R1VTrainingStalled" in result.stdout + result.stderr


@pytest.mark.parametrize("values, key", [
    ({"monitoring": {"rules": {"stalled": {"after": "30 minutes"}}}}, "/monitoring/rules/stalled/after"),
    ({"monitoring": {"rules": {"restarts": {"threshold": -1}}}}, "/monitoring/rules/restarts/threshold"),
    ({"monitoring": {"rules": {"severity": "page"}}}, "severity"),
    ({"monitoring": {"dashboard": {"uid": "R1V_Dashboard"}}}, "/monitoring/dashboard/uid"),
])
def test_bad_monitoring_values_are_rejected_naming_the_key(values, key):
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert key in str(err.value)


def test_score_alerts_render_only_where_the_evaluator_pushes_scores(tmp_path):
    for values in ({"evaluator": {"enabled": False}}, {"evaluator": {"pushgatewayUrl": ""}}):
        names = [r["alert"] for r in rules(values)]
        assert names == [a for a in ALERTS if a not in SCORE_ALERTS]
    # An evaluator-off release whose training finished: nothing waits for scores.
    off = {"evaluator": {"enabled": False}}
    finished = [c for c in cases() if c["name"] in ("scores missing", "scores lost")]
    for case in finished:
        case["alert_rule_test"][0]["exp_alerts"] = []
    result = _unit_tests(tmp_path, finished, off)
    assert result.returncode == 0, result.stdout + result.stderr


def _panel():
    dashboard = json.loads((REPO / "charts" / "r1v" / "dashboards" / "r1v.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"].startswith("Restarts")]
    return panel["targets"][0]["expr"]


def test_the_restarts_panel_and_alert_share_one_expression_and_agree_on_a_recreated_pod(tmp_path):
    alert = {r["alert"]: r for r in rules()}["R1VTrainingRestarts"]["expr"]
    # The panel is the alert's expression with Grafana's variables in the selector and a 1h window.
    panel = _panel()
    as_grafana = (alert.removesuffix(" > 0")
                  .replace(f'namespace="{NAMESPACE}", pod=~"{RUN}-', 'namespace=~"$namespace", pod=~"($job)-'))
    assert panel == as_grafana
    # What Grafana sends with namespace=r1v and the run's job selected.
    queried = panel.replace("$namespace", NAMESPACE).replace("$job", RUN)
    both = {"name": "panel and alert", "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in RECREATED],
            "promql_expr_test": [{"expr": queried, "eval_time": "40m",
                                  "exp_samples": [{"labels": f'{{namespace="{NAMESPACE}"}}', "value": 1}]}],
            "alert_rule_test": [{"eval_time": "40m", "alertname": "R1VTrainingRestarts",
                                 "exp_alerts": [{"exp_labels": _base("R1VTrainingRestarts", namespace=NAMESPACE)}]}]}
    result = _unit_tests(tmp_path, [both])
    assert result.returncode == 0, result.stdout + result.stderr
    # The old panel (in-place restarts only) reads 0 on the same series: the check can fail.
    both["promql_expr_test"][0]["expr"] = queried.split(" + ")[0].lstrip("(")
    assert _unit_tests(tmp_path, [both]).returncode != 0
