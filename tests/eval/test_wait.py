"""Waiting for training: a PyTorchJob or a TrainJob on kmock's fake API server (not a real one), and the marker file."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from eval_job import cli
from r1v_job.checkpoints import write_completion_marker

REPO = Path(__file__).resolve().parents[2]

JOB_PATH = "/apis/kubeflow.org/v1/namespaces/team/pytorchjobs/{name}"


def pytorchjob(name: str, *conditions: dict) -> dict:
    """A PyTorchJob as the training operator stores it (runPolicy is defaulted by the operator, and
    kubeflow-training's models require it)."""
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"runPolicy": {"cleanPodPolicy": "None"}, "pytorchReplicaSpecs": {"Master": {
            "replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch", "image": "trainer"}]}}}}},
        "status": {"conditions": list(conditions)},
    }


def condition(kind: str, status: str = "True", reason: str | None = None, message: str | None = None) -> dict:
    return {"type": kind, "status": status, "reason": reason or f"PyTorchJob{kind}", "message": message or kind}


def jobs_api(fake) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(str(fake.kubeconfig_path)))


def set_status(api, name, *conditions):
    api.patch_namespaced_custom_object_status("kubeflow.org", "v1", "team", "pytorchjobs", name,
                                              {"status": {"conditions": list(conditions)}})


def k8s_args(fake) -> list[str]:
    return ["--namespace", "team", "--kubeconfig", str(fake.kubeconfig_path), "--poll-interval", "0.1"]


def until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Background:
    """cli.main in a thread, as the evaluator pod runs beside the training job."""

    def __init__(self, argv):
        self.rc = None
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self.thread.start()

    def _run(self, argv):
        self.rc = cli.main(argv)

    def join(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the evaluator is still waiting"
        return self.rc


def waiting_evaluator(job, fake_k8s, model, questions, out, *extra) -> Background:
    """The evaluator of `model` on `questions`, waiting on `job` (KIND/NAME) in the fake cluster."""
    return Background(["--model", str(model), "--data", str(questions), "--out", str(out), "--wait-for", job,
                       *k8s_args(fake_k8s), *extra])


def test_waits_for_a_job_that_appears_runs_then_succeeds(fake_k8s, tiny_model, questions, pushgateway, tmp_path):
    out = tmp_path / "out"
    path = JOB_PATH.format(name="r1v-run")
    evaluator = waiting_evaluator("pytorchjob/r1v-run", fake_k8s, tiny_model, questions, out,
                                  "--max-new-tokens", "4", "--pushgateway", pushgateway.url)
    # The job does not exist yet: the evaluator keeps asking instead of failing.
    until(lambda: fake_k8s.requests(f"get {path}") >= 2)
    api = jobs_api(fake_k8s)
    api.create_namespaced_custom_object("kubeflow.org", "v1", "team", "pytorchjobs",
                                        pytorchjob("r1v-run", condition("Created"), condition("Running")))
    seen = fake_k8s.requests(f"get {path}")
    until(lambda: fake_k8s.requests(f"get {path}") >= seen + 3)  # polled while Running...
    assert evaluator.thread.is_alive() and not out.exists()  # ...without evaluating
    set_status(api, "r1v-run", condition("Created"), condition("Running", "False"), condition("Succeeded"))
    assert evaluator.join() == 0
    assert json.loads((out / "final" / "cot" / "summary.json").read_text())["evaluated"] == 6
    # The run label defaults to the job's name.
    assert pushgateway.value("r1v_eval_questions_evaluated", run="r1v-run", checkpoint="final", prompt="cot") == 6


def test_failed_job_exits_nonzero_with_its_reason_and_pushes_a_failure(
        fake_k8s, tiny_model, questions, pushgateway, tmp_path, caplog):
    api = jobs_api(fake_k8s)
    api.create_namespaced_custom_object("kubeflow.org", "v1", "team", "pytorchjobs",
                                        pytorchjob("r1v-bad", condition("Created"), condition("Running")))
    out = tmp_path / "out"
    started = time.time()
    evaluator = waiting_evaluator("pytorchjob/r1v-bad", fake_k8s, tiny_model, questions, out,
                                  "--pushgateway", pushgateway.url)
    until(lambda: fake_k8s.requests(f"get {JOB_PATH.format(name='r1v-bad')}") >= 2)
    message = "PyTorchJob team/r1v-bad is failed because 1 Master replica(s) failed."
    set_status(api, "r1v-bad", condition("Created"), condition("Running", "False"),
               condition("Failed", reason="PyTorchJobFailed", message=message))
    assert evaluator.join() == cli.EXIT_TRAINING_FAILED
    assert f"training job team/r1v-bad failed: PyTorchJobFailed: {message}" in caplog.text
    assert not out.exists()
    group = dict(job="r1v-eval", run="r1v-bad", checkpoint="final")
    assert pushgateway.value("r1v_eval_training_failed", reason="PyTorchJobFailed", **group) == 1
    assert started <= pushgateway.value("r1v_eval_last_failure_timestamp_seconds", **group) <= time.time()


def test_job_still_running_at_the_timeout_exits_nonzero(fake_k8s, tiny_model, questions, tmp_path, caplog):
    jobs_api(fake_k8s).create_namespaced_custom_object("kubeflow.org", "v1", "team", "pytorchjobs",
                                               pytorchjob("r1v-slow", condition("Running")))
    rc = cli.main(["--model", str(tiny_model), "--data", str(questions), "--out", str(tmp_path / "out"),
                   "--wait-for", "pytorchjob/r1v-slow", *k8s_args(fake_k8s),
                   "--timeout", "0.5"])
    assert rc == cli.EXIT_WAIT_TIMEOUT
    assert "PyTorchJob team/r1v-slow did not finish within" in caplog.text


def test_marker_mode_waits_for_the_completion_marker(copy_model, questions, tmp_path):
    run = copy_model(tmp_path / "run")
    out = tmp_path / "out"
    evaluator = Background(["--checkpoints", str(run), "--data", str(questions), "--out", str(out),
                            "--max-new-tokens", "4", "--wait-for", "marker", "--poll-interval", "0.05"])
    time.sleep(0.5)
    assert evaluator.thread.is_alive() and not out.exists()
    (run / "training_complete.json").write_text('{"global_step": ')  # half-written: not done yet
    time.sleep(0.3)
    assert evaluator.thread.is_alive()
    # A marker that records no files, or other files than those beside it, is refused.
    (run / "training_complete.json").write_text(json.dumps({"global_step": 7, "model_dir": str(run)}))
    time.sleep(0.3)
    assert evaluator.thread.is_alive()
    write_completion_marker(run, "training_complete.json", 7)  # the trainer's own writer
    assert evaluator.join() == 0
    assert json.loads((out / "final" / "cot" / "summary.json").read_text())["step"] == 7


def test_a_marker_that_does_not_match_the_final_model_is_refused(copy_model, questions, tmp_path, caplog):
    run = copy_model(tmp_path / "run")
    write_completion_marker(run, "training_complete.json", 7)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # same size, other bytes
    rc = cli.main(["--checkpoints", str(run), "--data", str(questions), "--out", str(tmp_path / "out"),
                   "--wait-for", "marker", "--timeout", "0.3", "--poll-interval", "0.05"])
    assert rc == cli.EXIT_WAIT_TIMEOUT
    assert "model.safetensors has another sha256 than the marker records" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_waiting_for_a_job_without_a_kubeconfig_is_one_line(kind, tiny_model, questions, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    result = subprocess.run([sys.executable, "-m", "eval_job", "--model", str(tiny_model), "--data", str(questions),
                             "--out", str(tmp_path / "out"), "--wait-for", f"{kind}/r1v"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == cli.EXIT_USAGE
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"--wait-for {kind}/r1v: cannot reach the Kubernetes API" in err[0] and "--kubeconfig" in err[0]


def test_marker_timeout_exits_nonzero(tiny_model, questions, tmp_path, caplog):
    rc = cli.main(["--model", str(tiny_model), "--data", str(questions), "--out", str(tmp_path / "out"),
                   "--wait-for", "marker", "--timeout", "0.2", "--poll-interval", "0.05"])
    assert rc == cli.EXIT_WAIT_TIMEOUT
    assert f"no completion marker {tiny_model / 'training_complete.json'}" in caplog.text


@pytest.mark.parametrize("spec", ["pytorchjob", "pytorchjob/", "trainjob/", "job/x", "markers"])
def test_bad_wait_for_is_a_usage_error(spec, tiny_model, questions, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tiny_model), "--data", str(questions), "--out", str(tmp_path), "--wait-for", spec])
    assert e.value.code == cli.EXIT_USAGE


@pytest.mark.parametrize("kind, path, plural", [
    ("PyTorchJob", "/apis/kubeflow.org/v1/namespaces/team/pytorchjobs/{name}", "pytorchjobs.kubeflow.org"),
    ("TrainJob", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs/{name}",
     "trainjobs.trainer.kubeflow.org"),
])
def test_forbidden_job_fails_at_once_instead_of_waiting(kind, path, plural, fake_k8s, tiny_model, questions,
                                                        tmp_path, caplog):
    import kmock

    # RBAC refusing the evaluator's service account will not fix itself: no point waiting a day.
    fake_k8s.emulator[f"get {path.format(name='r1v-denied')}"] << kmock.KubernetesError(
        status=403, reason="Forbidden", message=f"{plural} is forbidden")
    started = time.monotonic()
    rc = cli.main(["--model", str(tiny_model), "--data", str(questions), "--out", str(tmp_path / "out"),
                   "--wait-for", f"{kind.lower()}/r1v-denied", *k8s_args(fake_k8s), "--timeout", "60"])
    assert rc == cli.EXIT_INPUT
    assert time.monotonic() - started < 30
    assert f"cannot read the training job: Failed to get {kind}: team/r1v-denied. Error: (403)" in caplog.text


# --- Kubeflow Trainer v2: TrainJob -----------------------------------------------------------------

TRAINJOB_PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs/{name}"


def trainjob(name: str, *conditions: dict) -> dict:
    """A TrainJob as Trainer v2.3 stores it (conditions Created, then Complete or Failed)."""
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": name},
                     "trainer": {"numNodes": 2, "numProcPerNode": 8}},
            "status": {"conditions": list(conditions)}}


def set_trainjob_status(api, name, *conditions):
    api.patch_namespaced_custom_object_status("trainer.kubeflow.org", "v1alpha1", "team", "trainjobs", name,
                                              {"status": {"conditions": list(conditions)}})


def test_waits_for_a_trainjob_that_appears_then_completes(fake_k8s, tiny_model, questions, pushgateway, tmp_path):
    out = tmp_path / "out"
    path = TRAINJOB_PATH.format(name="r1v-v2")
    evaluator = waiting_evaluator("trainjob/r1v-v2", fake_k8s, tiny_model, questions, out,
                                  "--max-new-tokens", "4", "--pushgateway", pushgateway.url)
    until(lambda: fake_k8s.requests(f"get {path}") >= 2)  # not created yet: still asking
    api = jobs_api(fake_k8s)
    api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "team", "trainjobs",
                                        trainjob("r1v-v2", condition("Created", reason="JobsCreationSucceeded")))
    seen = fake_k8s.requests(f"get {path}")
    until(lambda: fake_k8s.requests(f"get {path}") >= seen + 3)
    # "Succeeded" is the PyTorchJob's word; a TrainJob is done only at Complete.
    set_trainjob_status(api, "r1v-v2", condition("Created"), condition("Succeeded"))
    seen = fake_k8s.requests(f"get {path}")
    until(lambda: fake_k8s.requests(f"get {path}") >= seen + 2)
    assert evaluator.thread.is_alive() and not out.exists()
    set_trainjob_status(api, "r1v-v2", condition("Created"), condition("Complete", reason="JobSetCompleted"))
    assert evaluator.join() == 0
    assert json.loads((out / "final" / "cot" / "summary.json").read_text())["evaluated"] == 6
    assert pushgateway.value("r1v_eval_questions_evaluated", run="r1v-v2", checkpoint="final", prompt="cot") == 6


def test_failed_trainjob_exits_nonzero_with_its_reason(fake_k8s, tiny_model, questions, tmp_path, caplog):
    api = jobs_api(fake_k8s)
    api.create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "team", "trainjobs",
                                        trainjob("r1v-v2bad", condition("Created")))
    evaluator = waiting_evaluator("trainjob/r1v-v2bad", fake_k8s, tiny_model, questions, tmp_path / "out")
    until(lambda: fake_k8s.requests(f"get {TRAINJOB_PATH.format(name='r1v-v2bad')}") >= 2)
    set_trainjob_status(api, "r1v-v2bad", condition("Created"),
                        condition("Failed", reason="FailedJobs", message="jobset failed: node-0 PodFailurePolicy"))
    assert evaluator.join() == cli.EXIT_TRAINING_FAILED
    assert "training job team/r1v-v2bad failed: FailedJobs: jobset failed: node-0 PodFailurePolicy" in caplog.text


def test_trainjob_still_running_at_the_timeout_exits_nonzero(fake_k8s, tiny_model, questions, tmp_path, caplog):
    jobs_api(fake_k8s).create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "team", "trainjobs",
                                                       trainjob("r1v-v2slow", condition("Created")))
    rc = cli.main(["--model", str(tiny_model), "--data", str(questions), "--out", str(tmp_path / "out"),
                   "--wait-for", "trainjob/r1v-v2slow", *k8s_args(fake_k8s), "--timeout", "0.5"])
    assert rc == cli.EXIT_WAIT_TIMEOUT
    assert "TrainJob team/r1v-v2slow did not finish within" in caplog.text
