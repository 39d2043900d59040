"""Scores survive a Pushgateway restart: a real gateway (Debian's prometheus-pushgateway on loopback)
killed after the evaluator pushed gets every series back, byte for byte, from `--repush` (no model
loaded); the final model with a checkpoint's very weights is not scored again; the persistence
settings of k8s/monitoring/pushgateway-values.yaml keep pushed groups through a SIGKILL."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from eval_job import cli, generate, metrics
from r1v_job.checkpoints import COMPLETION_MARKER, write_completion_marker
from tests.eval.pushgateway import PUSHGATEWAY_BIN, Pushgateway
from tests.helpers import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]


def r1v_series(gateway_url: str) -> list[str]:
    """The gateway's r1v_eval_* sample lines as it serves them (its push_time_seconds excluded)."""
    with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=5) as r:
        return sorted(line for line in r.read().decode().splitlines() if line.startswith("r1v_eval_"))


def kill(gateway: Pushgateway) -> None:
    gateway.proc.kill()  # SIGKILL: no shutdown hook writes anything
    gateway.proc.wait(10)


@pytest.fixture
def scored(copy_model, questions, tmp_path, monkeypatch):
    """A run scored and pushed to a fresh gateway: checkpoint-1, checkpoint-2 and a final model that is
    checkpoint-2's weights (with the trainer's completion marker), as a run saving at its last step has."""
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    run = copy_model(tmp_path / "run", step=2)
    copy_model(run / "checkpoint-1", step=1)
    copy_model(run / "checkpoint-2", step=2)
    write_completion_marker(run, COMPLETION_MARKER, 2)
    loaded = []
    real_load = generate.load_generator

    def counting_load(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return real_load(path, *args, **kwargs)
    monkeypatch.setattr(generate, "load_generator", counting_load)
    gateway = Pushgateway(free_port(), tmp_path / "gateway.log").start()
    out = tmp_path / "out"
    argv = ["--checkpoints", str(run), "--data", str(questions), "--out", str(out), "--max-new-tokens", "4",
            "--pushgateway", gateway.url, "--run", "exp"]
    assert cli.main(argv) == cli.EXIT_OK
    yield gateway, out, loaded
    gateway.stop()


def test_the_final_model_with_a_checkpoints_weights_takes_its_score_labelled_both_ways(scored):
    gateway, out, loaded = scored
    assert loaded == ["checkpoint-1", "checkpoint-2"]  # the final model was not loaded, nor scored
    final = json.loads((out / "final" / "cot" / "summary.json").read_text())
    twin = json.loads((out / "checkpoint-2" / "cot" / "summary.json").read_text())
    assert final["same_weights_as"] == "checkpoint-2" and final["checkpoint"] == "final" and final["step"] == 2
    assert final["accuracy"] == twin["accuracy"] and final["correct"] == twin["correct"]
    assert ((out / "final" / "cot" / "results.jsonl").read_text()
            == (out / "checkpoint-2" / "cot" / "results.jsonl").read_text())
    index = json.loads((out / "scores.json").read_text())
    assert [r.get("same_weights_as") for r in index] == [None, None, "checkpoint-2"]
    group = dict(job="r1v-eval", namespace="team-a", run="exp", prompt="cot")
    assert gateway.value("r1v_eval_accuracy_ratio", checkpoint="final", **group) == \
        gateway.value("r1v_eval_accuracy_ratio", checkpoint="checkpoint-2", **group) == twin["accuracy"]


def test_other_weights_are_scored_not_reused(copy_model, questions, tmp_path, monkeypatch):
    from eval_job.checkpoints import find_targets, same_weights

    run = copy_model(tmp_path / "run", step=2)
    copy_model(run / "checkpoint-2", step=2)
    write_completion_marker(run, COMPLETION_MARKER, 2)
    targets = find_targets(run, run)
    assert same_weights(targets[-1], targets[:-1]).name == "checkpoint-2"
    with (run / "checkpoint-2" / "model.safetensors").open("r+b") as f:  # one byte differs, same size
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert same_weights(targets[-1], targets[:-1]) is None


def test_a_killed_gateway_gets_every_series_back_from_disk_byte_for_byte(scored, tmp_path, monkeypatch):
    gateway, out, _ = scored
    pushed = r1v_series(gateway.url)
    assert len([s for s in pushed if s.startswith("r1v_eval_accuracy_ratio")]) == 3  # three groups
    kill(gateway)
    gateway.start()  # same port, no persistence: everything pushed is gone
    assert r1v_series(gateway.url) == []

    def no_model(*args, **kwargs):
        raise AssertionError("--repush scored a model")
    monkeypatch.setattr(generate, "load_generator", no_model)
    # The chart's scheduled re-push, its arguments with this test's folder and gateway.
    from tests.chart.render import only, render

    cron = only(render({"runName": "exp", "evaluator": {"repush": {"schedule": "*/15 * * * *"}}},
                       namespace="team-a"), "CronJob")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "eval_job"]
    where = {"/data/runs/exp/eval": str(out), "http://prometheus-pushgateway.monitoring.svc:9091": gateway.url}
    assert cli.main([where.get(a, a) for a in container["args"]]) == cli.EXIT_OK
    assert r1v_series(gateway.url) == pushed


def test_repush_needs_the_run_and_fails_clearly_on_a_broken_index(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--repush", "--out", str(tmp_path), "--pushgateway", "http://127.0.0.1:9"])
    assert e.value.code == cli.EXIT_USAGE
    assert "--repush needs --pushgateway URL and --run NAME" in capsys.readouterr().err
    argv = ["--repush", "--out", str(tmp_path), "--pushgateway", "http://127.0.0.1:9", "--run", "r"]
    assert cli.main(argv) == cli.EXIT_OK  # not evaluated yet: nothing lost, nothing to do
    (tmp_path / "scores.json").write_text('[{"checkpoint": "final", "prompt": "cot"}]')
    assert cli.main(argv) == cli.EXIT_INPUT
    assert "nothing to re-push from" in caplog.text and "summary.json" in caplog.text


def test_the_documented_gateway_persistence_survives_a_sigkill(tmp_path):
    values = yaml.safe_load((REPO / "k8s" / "monitoring" / "pushgateway-values.yaml").read_text())
    args = dict(a.split("=", 1) for a in values["extraArgs"])
    interval = args["--persistence.interval"]
    assert args["--persistence.file"].startswith(values["persistentVolume"]["mountPath"] + "/")
    assert interval.endswith("s") and int(interval[:-1]) <= 10, "the interval bounds what a kill loses"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [PUSHGATEWAY_BIN, f"--web.listen-address=127.0.0.1:{port}",
           f"--persistence.file={tmp_path / 'pushgateway.db'}", f"--persistence.interval={interval}"]
    summary = {"benchmark": "superclevr", "prompt": "cot", "accuracy": 0.5, "evaluated": 4, "skipped": 0,
               "parse_failures": 0, "duration_seconds": 1.0, "samples_per_second": 4.0, "finished_at_unix": 1.0}
    log = tmp_path / "log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, f"{url}/-/ready", log, "pushgateway", timeout=20)
        metrics.push(url, metrics.scores_registry([summary], 7), metrics.grouping_key("ns", "r", "final"))
        pushed = r1v_series(url)
        time.sleep(int(interval[:-1]) + 1)
        proc.kill()
        proc.wait(10)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(proc, f"{url}/-/ready", log, "pushgateway", timeout=20)
        assert r1v_series(url) == pushed
    finally:
        proc.kill()
        proc.wait(10)
