"""Pushing: an unreachable gateway is retried then fails clearly with the results kept; a rerun pushes
them without evaluating; a permanent 4xx is not retried; runs are grouped by namespace. The metric
families are all registered and all documented."""

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval_job import cli, metrics
from tests.eval.pushgateway import Pushgateway
from tests.helpers import free_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_push_retries_with_backoff_then_names_the_gateway(pushgateway):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    waits = []
    with pytest.raises(metrics.PushError) as e:
        metrics.push(url, metrics.failure_registry("X"), {"run": "r", "checkpoint": "final"}, attempts=4,
                     backoff=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0]
    assert f"to the Pushgateway at {url} after 4 attempts" in str(e.value)


def test_gateway_down_keeps_results_fails_clearly_and_a_rerun_pushes_without_evaluating(
        copy_model, questions, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("POD_NAMESPACE", "team-a")  # what the chart sets through the downward API
    run = copy_model(tmp_path / "down")
    copy_model(run / "checkpoint-1", step=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"  # nothing listens there yet
    out = tmp_path / "out"
    argv = ["--checkpoints", str(run), "--data", str(questions), "--out", str(out), "--max-new-tokens", "4",
            "--pushgateway", url, "--push-attempts", "2", "--push-backoff", "0.01"]
    assert cli.main(argv) == cli.EXIT_PUSH_FAILED
    # Both models were still evaluated and are on disk...
    summaries = {name: json.loads((out / name / "cot" / "summary.json").read_text())
                 for name in ("checkpoint-1", "final")}
    assert all(s["evaluated"] == 6 for s in summaries.values())
    assert (out / "final" / "cot" / "results.jsonl").is_file()
    # ...and one clear error: after the first failed push the gateway was not tried again.
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert (f"could not push {{'namespace': 'team-a', 'run': 'down', 'checkpoint': 'checkpoint-1'}} to the "
            f"Pushgateway at {url} "
            "after 2 attempts") in errors[0]
    assert f"The results are on disk in {out}; rerun the same command to push them" in errors[0]

    def no_model(*args, **kwargs):
        raise AssertionError("the rerun evaluated again")
    monkeypatch.setattr("eval_job.generate.load_generator", no_model)
    gateway = Pushgateway(port, tmp_path / "gateway.log").start()
    try:
        assert cli.main(argv) == 0
        for name, summary in summaries.items():
            labels = dict(job="r1v-eval", namespace="team-a", run="down", checkpoint=name, prompt="cot")
            assert gateway.value("r1v_eval_accuracy_ratio", **labels) == summary["accuracy"]
            assert gateway.value("r1v_eval_questions_evaluated", **labels) == 6
            assert gateway.value("r1v_eval_checkpoint_step", job="r1v-eval", namespace="team-a", run="down",
                                 checkpoint=name) == \
                summary["step"]
    finally:
        gateway.stop()


def test_new_registry_has_every_family_and_the_docs_describe_each():
    names = {family.name for family in metrics.new_registry().collect()}
    assert names == set(metrics.FAMILIES)
    assert {"r1v_eval_accuracy_ratio", "r1v_eval_questions_evaluated", "r1v_eval_questions_skipped",
            "r1v_eval_parse_failures", "r1v_eval_duration_seconds", "r1v_eval_samples_per_second",
            "r1v_eval_checkpoint_step", "r1v_eval_last_success_timestamp_seconds", "r1v_eval_training_failed",
            "r1v_eval_last_failure_timestamp_seconds"} == names
    section = DOCS.read_text().split("## Evaluator (pushed to the Pushgateway)", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(r1v_eval_\w+)", section))
    assert documented == names


class _Answers(BaseHTTPRequestHandler):
    """Answers each PUT with the next status of the server's `codes` (the last one repeats)."""

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(self.path)
        code = self.server.codes[min(len(self.server.seen), len(self.server.codes)) - 1]
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    servers = []

    def start(*codes):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
        server.codes, server.seen = codes, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_port}"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("code", [400, 403, 404])
def test_a_permanent_4xx_is_not_retried(answering, code):
    server, url = answering(code)
    waits = []
    with pytest.raises(metrics.PushError) as e:
        metrics.push(url, metrics.failure_registry("X"), metrics.grouping_key("ns", "r", "final"), attempts=4,
                     backoff=0.5, sleep=waits.append)
    assert len(server.seen) == 1 and waits == []
    assert f"the Pushgateway at {url} refused" in str(e.value) and f"HTTP Error {code}" in str(e.value)


@pytest.mark.parametrize("code", [429, 503])
def test_too_many_requests_and_5xx_are_retried_until_the_push_lands(answering, code):
    server, url = answering(code, code, 200)
    waits = []
    metrics.push(url, metrics.failure_registry("X"), metrics.grouping_key("ns", "r", "final"), attempts=4,
                 backoff=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0] and len(server.seen) == 3
    assert server.seen[-1] == "/metrics/job/r1v-eval/checkpoint/final/namespace/ns/run/r"


def test_a_wrong_path_on_a_real_gateway_fails_at_once(pushgateway):
    waits = []
    with pytest.raises(metrics.PushError, match="HTTP Error 404"):
        metrics.push(f"{pushgateway.url}/wrong", metrics.failure_registry("X"),
                     metrics.grouping_key("ns", "r", "final"), sleep=waits.append)
    assert waits == []


def test_the_test_gateway_starts_empty(tmp_path):
    # Debian's default persistence file would hand a fresh gateway the groups of earlier runs.
    gateway = Pushgateway(free_port(), tmp_path / "log").start()
    try:
        metrics.push(gateway.url, metrics.failure_registry("X"), metrics.grouping_key("ns", "r", "final"))
        gateway.stop()
        gateway = Pushgateway(gateway.port, tmp_path / "log").start()
        assert gateway.samples("r1v_eval_training_failed") == []
    finally:
        gateway.stop()


def test_the_same_run_name_in_two_namespaces_keeps_two_groups(pushgateway, monkeypatch):
    for namespace, accuracy in (("team-a", 0.25), ("team-b", 0.75)):
        monkeypatch.setenv("POD_NAMESPACE", namespace)
        summary = {"benchmark": "superclevr", "prompt": "cot", "accuracy": accuracy, "evaluated": 4, "skipped": 0,
                   "parse_failures": 0, "duration_seconds": 1.0, "samples_per_second": 4.0, "finished_at_unix": 1.0}
        metrics.push(pushgateway.url, metrics.scores_registry([summary], 3),
                     metrics.grouping_key(metrics.pod_namespace(), "twins", "final"))
    assert pushgateway.value("r1v_eval_accuracy_ratio", namespace="team-a", run="twins") == 0.25
    assert pushgateway.value("r1v_eval_accuracy_ratio", namespace="team-b", run="twins") == 0.75


def test_the_namespace_comes_from_the_flag_then_the_pod(monkeypatch, tmp_path):
    token = tmp_path / "namespace"
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert metrics.pod_namespace(None, token) == "default"  # outside a cluster
    token.write_text("from-service-account\n")
    assert metrics.pod_namespace(None, token) == "from-service-account"
    monkeypatch.setenv("POD_NAMESPACE", "from-downward-api")
    assert metrics.pod_namespace(None, token) == "from-downward-api"
    assert metrics.pod_namespace("from-flag", token) == "from-flag"
