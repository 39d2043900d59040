"""A real Prometheus (Debian's, on loopback) scrapes a real smoke run of the trainer and a real
Pushgateway holding the evaluator's scores, and loads the chart's rendered alert rules: every
dashboard query and every alert expression is answered without error, the same run name in two
namespaces stays two sets of series, and the last scrape of the finished run shows progress 1.0 at
its final step."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from transformers import TrainerCallback

from tests.chart.render import REPO, only, render
from tests.chart.test_dashboard import DASHBOARDS, exprs
from tests.eval.pushgateway import Pushgateway
from tests.helpers import free_port, wait_ready

pytestmark = pytest.mark.slow

RUN = "r1v"
# Scraped as the chart's monitor labels rank 0's target: prometheus-operator adds namespace and pod.
TARGET_LABELS = {"team-a": {"namespace": "team-a", "run": RUN, "pod": f"{RUN}-master-0"},
                 "team-b": {"namespace": "team-b", "run": RUN, "pod": f"{RUN}-master-0"}}
ACCURACY = {"team-a": 0.25, "team-b": 0.75}
# Series that only exist on a GPU, or once a training job failed: their queries may answer empty here.
EMPTY_HERE = ("r1v_train_gpu_memory", "r1v_eval_training_failed", "DCGM_", "kube_")


class Prometheus:
    def __init__(self, port: int, config: dict, directory):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run `make tools`")
        self.url = f"http://127.0.0.1:{port}"
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.proc, f"{self.url}/-/ready", self.log, "prometheus", timeout=30)

    def wait_for_scrapes(self, targets: int, timeout: float = 30) -> None:
        """Until each target has been tried once: Prometheus hands discovered targets to its scrapers
        at most every 5 s, so a scrape loop starts a few seconds after /-/ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.api("targets")["data"]["activeTargets"]
            if len(active) == targets and all(not t["lastScrape"].startswith("0001") for t in active):
                return
            time.sleep(0.2)
        pytest.fail(f"prometheus did not scrape its {targets} targets within {timeout} s: {self.log.read_text()}")

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query: 400 with Prometheus' error in the body
            return json.loads(e.read())

    def value(self, expr: str) -> dict[str, float]:
        """Instant query: {namespace: value} of the result."""
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return {r["metric"].get("namespace", ""): float(r["value"][1]) for r in answer["data"]["result"]}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)


def _twin_registry() -> CollectorRegistry:
    """The other namespace's run of the same name, mid-way: step 7 of 9."""
    from r1v_job.metrics import TrainMetrics

    registry = CollectorRegistry()
    twin = TrainMetrics(registry)
    twin.global_step.set(7)
    twin.final_step.set(9)
    twin.max_steps.set(9)
    twin.last_progress.set(time.time())
    twin.logged["r1v_train_reward"].set(1.5)
    return registry


class Paced(TrainerCallback):
    """Holds the start and each step but the last for a few scrapes (the tiny model's steps take well
    under the 1 s scrape interval). The last step is not held: only the grace period lets it be scraped."""

    def on_train_begin(self, args, state, control, **kwargs):
        time.sleep(2)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < 2:
            time.sleep(2)


def _scores(accuracy: float) -> dict:
    return {"benchmark": "superclevr", "prompt": "cot", "accuracy": accuracy, "evaluated": 4, "skipped": 0,
            "parse_failures": 1, "duration_seconds": 2.0, "samples_per_second": 2.0, "finished_at_unix": time.time()}


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, clevr_train, tmp_path_factory):
    from eval_job import metrics
    from r1v_job.grpo import parse_args, run

    tmp = tmp_path_factory.mktemp("live")
    train_port, twin_port, prom_port = free_port(), free_port(), free_port()
    gateway = Pushgateway(free_port(), tmp / "pushgateway.log").start()
    twin, _ = start_http_server(twin_port, addr="127.0.0.1", registry=_twin_registry())
    rules = tmp / "rules.yaml"
    rules.write_text(yaml.safe_dump(only(render(namespace="team-a"), "PrometheusRule")["spec"]))
    prometheus = Prometheus(prom_port, {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "r1v-metrics", "static_configs": [
                {"targets": [f"127.0.0.1:{train_port}"], "labels": TARGET_LABELS["team-a"]},
                {"targets": [f"127.0.0.1:{twin_port}"], "labels": TARGET_LABELS["team-b"]}]},
            # As kube-prometheus-stack-values.yaml scrapes it: the pushed labels win.
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}]},
        ]}, tmp)
    try:
        prometheus.wait_for_scrapes(3)
        for namespace, accuracy in ACCURACY.items():
            metrics.push(gateway.url, metrics.scores_registry([_scores(accuracy)], 2),
                         metrics.grouping_key(namespace, RUN, "final"))
        start = time.time()
        # stop_at_step 2 of a 4-step schedule: progress must reach 1.0 at step 2, not 0.5.
        trainer = run(*parse_args([
            "--config", str(REPO / "recipes" / "smoke_cpu.yaml"), "--model_name_or_path", str(tiny_model_dir),
            "--dataset_name", str(clevr_train), "--output_dir", str(tmp / "run"), "--offline_bootstrap", "false",
            "--max_completion_length", "8", "--max_steps", "4", "--stop_at_step", "2", "--save_steps", "2",
            "--metrics_port", str(train_port), "--metrics_grace_seconds", "3"]), callbacks=[Paced()])
        time.sleep(2)  # a few rule evaluations after the run
        yield dict(prometheus=prometheus, start=start, end=time.time(), trainer=trainer, tmp=tmp)
    finally:
        prometheus.stop()
        twin.shutdown()
        twin.server_close()
        gateway.stop()


def _substitute(expr: str) -> str:
    for var, value in {"$__rate_interval": "10s", "$namespace": "team-a", "$run": RUN, "$job": RUN,
                       "$benchmark": ".*"}.items():
        expr = expr.replace(var, value)
    return expr


def test_the_last_scrape_of_the_finished_run_shows_progress_one_at_the_final_step(scraped):
    p, trainer = scraped["prometheus"], scraped["trainer"]
    assert trainer.state.global_step == 2
    window = f"[{int(time.time() - scraped['start']) + 5}s]"
    sel = f'namespace="team-a", run="{RUN}"'
    assert p.value(f"last_over_time(r1v_train_global_step{{{sel}}}{window})") == {"team-a": 2}
    assert p.value(f"last_over_time(r1v_train_final_step{{{sel}}}{window})") == {"team-a": 2}
    assert p.value(f"last_over_time(r1v_train_max_steps{{{sel}}}{window})") == {"team-a": 4}
    marker = json.loads((scraped["tmp"] / "run" / "training_complete.json").read_text())
    assert marker["global_step"] == 2
    completed = p.value(f"last_over_time(r1v_train_completion_timestamp_seconds{{{sel}}}{window})")["team-a"]
    assert scraped["start"] < completed < scraped["end"]
    # The dashboard's own progress query, over the run: its last point is 1.0.
    (progress,) = [e for t, e in exprs(json.loads(DASHBOARDS[0].read_text())) if t.startswith("Progress")]
    answer = p.api("query_range", query=_substitute(progress), start=scraped["start"], end=scraped["end"], step=1)
    (series,) = answer["data"]["result"]
    points = [float(v) for _, v in series["values"]]
    assert points[-1] == 1.0
    # It rose through the steps: 0 (before the first), 0.5 (step 1 of 2), 1.0.
    assert {0.0, 0.5, 1.0} <= set(points) and points == sorted(points)


def test_trl_health_signals_reach_prometheus(scraped):
    p, window = scraped["prometheus"], f"[{int(time.time() - scraped['start']) + 5}s]"
    sel = f'namespace="team-a", run="{RUN}"'
    logged = [h for h in scraped["trainer"].state.log_history if "reward" in h][-1]
    for name, key in [("r1v_train_reward_zero_std_ratio", "frac_reward_zero_std"),
                      ("r1v_train_entropy_nats", "entropy"),
                      ("r1v_train_completion_truncated_ratio", "completions/clipped_ratio"),
                      ("r1v_train_completion_length_max_tokens", "completions/max_length")]:
        assert p.value(f"last_over_time({name}{{{sel}}}{window})")["team-a"] == pytest.approx(logged[key]), name
    assert p.value(f"last_over_time(r1v_train_tokens_total{{{sel}}}{window})")["team-a"] == logged["num_tokens"]
    bounds = p.api("query", query=f"last_over_time(r1v_train_clip_ratio{{{sel}}}{window})")["data"]["result"]
    assert sorted(r["metric"]["bound"] for r in bounds) == ["high", "low"]


def test_every_dashboard_query_is_answered(scraped):
    p = scraped["prometheus"]
    empty = []
    for path in DASHBOARDS:
        for title, expr in exprs(json.loads(path.read_text())):
            if expr.startswith("label_values("):
                continue
            answer = p.api("query_range", query=_substitute(expr), start=scraped["start"], end=scraped["end"], step=1)
            assert answer["status"] == "success", (title, expr, answer)
            if not answer["data"]["result"] and not any(s in expr for s in EMPTY_HERE):
                empty.append((title, expr))
    assert empty == []


def test_the_dashboard_variables_list_both_namespaces_and_the_run(scraped):
    p = scraped["prometheus"]
    variables = {v["name"]: v for v in json.loads(DASHBOARDS[0].read_text())["templating"]["list"]}

    def values(name):
        # label_values(SELECTOR, LABEL), as Grafana asks Prometheus for it.
        query = variables[name]["query"]["query"]
        selector, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        answer = p.api(f"label/{label}/values", **{"match[]": _substitute(selector), "start": scraped["start"],
                                                    "end": scraped["end"]})
        assert answer["status"] == "success", answer
        return answer["data"]

    assert {"team-a", "team-b"} <= set(values("namespace"))
    assert values("run") == [RUN]
    assert values("job") == [f"{RUN}-master-0"]  # the variable's regex cuts it to the job name, RUN


def test_the_same_run_name_in_two_namespaces_stays_two_series(scraped):
    p, window = scraped["prometheus"], f"[{int(time.time() - scraped['start']) + 5}s]"
    assert p.value(f'last_over_time(r1v_train_global_step{{run="{RUN}"}}{window})') == {"team-a": 2, "team-b": 7}
    assert p.value(f'r1v_eval_accuracy_ratio{{run="{RUN}", checkpoint="final"}}') == ACCURACY
    # The dashboard's accuracy query for one namespace sees that namespace's score only.
    (accuracy,) = [e for t, e in exprs(json.loads(DASHBOARDS[0].read_text()))
                   if "r1v_eval_accuracy_ratio" in e and t.startswith("SuperCLEVR")]
    assert p.value(_substitute(accuracy).replace('"team-a"', '"team-b"')) == {"team-b": 0.75}


def test_every_alert_expression_is_answered_and_evaluated_without_error(scraped):
    p = scraped["prometheus"]
    rendered = only(render(namespace="team-a"), "PrometheusRule")["spec"]["groups"][0]["rules"]
    for rule in rendered:
        answer = p.api("query", query=rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer)
    loaded = p.api("rules")["data"]["groups"][0]["rules"]
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in rendered)
    assert all(r["health"] == "ok" and not r.get("lastError") for r in loaded), loaded
    # A healthy finished run with its scores pushed raises nothing.
    assert [r["name"] for r in loaded if r["state"] != "inactive"] == []


def test_the_query_check_can_fail(scraped):
    assert scraped["prometheus"].api("query", query="sum(r1v_train_kl")["status"] == "error"

