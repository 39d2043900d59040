"""Pushing: an unreachable gateway is retried then fails clearly with the results kept; a rerun pushes
them without evaluating. The metric families are all registered and all documented."""

import json
import logging
import re
from pathlib import Path

import pytest

from eval_job import cli, metrics
from tests.eval.r1v_eval_helpers import Pushgateway
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
    assert (f"could not push {{'run': 'down', 'checkpoint': 'checkpoint-1'}} to the Pushgateway at {url} "
            "after 2 attempts") in errors[0]
    assert f"The results are on disk in {out}; rerun the same command to push them" in errors[0]

    def no_model(*args, **kwargs):
        raise AssertionError("the rerun evaluated again")
    monkeypatch.setattr("eval_job.generate.load_generator", no_model)
    gateway = Pushgateway(port, tmp_path / "gateway.log").start()
    try:
        assert cli.main(argv) == 0
        for name, summary in summaries.items():
            labels = dict(job="r1v-eval", run="down", checkpoint=name, prompt="cot")
            assert gateway.value("r1v_eval_accuracy_ratio", **labels) == summary["accuracy"]
            assert gateway.value("r1v_eval_questions_evaluated", **labels) == 6
            assert gateway.value("r1v_eval_checkpoint_step", job="r1v-eval", run="down", checkpoint=name) == \
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
