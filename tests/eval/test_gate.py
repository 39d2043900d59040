"""The evaluation gate against kmock's fake API server (not a real one: no Job controller, no Kueue, no
RBAC enforcement): the chart's suspended evaluation Job and its gate's own arguments, training runs
then succeeds (or fails), and the gate resumes the evaluation (or leaves it suspended)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from eval_job import cli, gate
from tests.chart.render import only, render
from tests.eval.test_wait import condition, pytorchjob, until

REPO = Path(__file__).resolve().parents[2]
NS = "team"
QUEUE = "kueue.x-k8s.io/queue-name"
TEST_AGENT = "r1v-test-setup"
KINDS = {
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs", "Succeeded"),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete"),
}


def training_job(kind: str, name: str, *conditions: dict) -> dict:
    if kind == "PyTorchJob":
        return pytorchjob(name, *conditions) | {"metadata": {"name": name, "namespace": NS}}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"runtimeRef": {"name": name, "kind": "TrainingRuntime"}},
            "status": {"conditions": list(conditions)}}


class Release:
    """One rendered release in the fake cluster: its evaluation Job created as Helm would, its
    training job running, its gate started with the rendered arguments."""

    def __init__(self, fake, values: dict):
        self.fake, self.values = fake, values
        self.kind = values.get("jobKind", "PyTorchJob")
        objects = render(values, namespace=NS)
        self.eval_job, self.gate_job = only(objects, "Job", "-eval"), only(objects, "Job", "-eval-gate")
        self.role = only(objects, "Role")
        self.name = next(o for o in objects if o["kind"] == self.kind)["metadata"]["name"]
        api_client = config.new_client_from_config(str(fake.kubeconfig_path))
        api_client.user_agent = TEST_AGENT  # the test's own requests, told apart from the gate's
        self.batch, self.jobs = client.BatchV1Api(api_client), client.CustomObjectsApi(api_client)
        self.batch.create_namespaced_job(NS, self.eval_job)
        self.group = KINDS[self.kind]
        self.jobs.create_namespaced_custom_object(*self.group[:2], NS, self.group[2],
                                                  training_job(self.kind, self.name, condition("Running")))
        args = self.gate_job["spec"]["template"]["spec"]["containers"][0]["args"]
        # The rendered arguments, with the fake's kubeconfig and a short poll; no Pushgateway here.
        if "--pushgateway" in args:
            at = args.index("--pushgateway")
            args = args[:at] + args[at + 4:]
        self.rc = None
        self.thread = threading.Thread(target=self._run, args=(
            [*args, "--kubeconfig", str(fake.kubeconfig_path), "--poll-interval", "0.1"],), daemon=True)
        self.thread.start()

    def _run(self, argv):
        self.rc = gate.main(argv)

    def training_gets(self) -> int:
        group, version, plural = self.group[:3]
        return self.fake.requests(f"get /apis/{group}/{version}/namespaces/{NS}/{plural}/{self.name}")

    def finish(self, outcome: str) -> int:
        status = [condition("Running", "False"), condition(outcome, reason=f"{self.kind}{outcome}")]
        self.jobs.patch_namespaced_custom_object_status(*self.group[:2], NS, self.group[2], self.name,
                                                        {"status": {"conditions": status}})
        self.thread.join(30)
        assert not self.thread.is_alive(), "the gate is still waiting"
        return self.rc

    def evaluation(self) -> dict:
        return self.batch.read_namespaced_job(self.eval_job["metadata"]["name"], NS).to_dict()

    def gate_requests_outside_the_role(self) -> list[str]:
        """Each request the gate made that its Role does not grant (verb, resource, name)."""
        allowed = {(verb, resource, name) for rule in self.role["rules"] for verb in rule["verbs"]
                   for resource in rule["resources"] for name in rule["resourceNames"]}
        denied = []
        for request in self.fake.emulator:
            if request.headers.get("User-Agent") == TEST_AGENT:
                continue
            parts = request.url.path.strip("/").split("/")
            verb = {"GET": "get", "PATCH": "patch"}.get(str(request.method.value).upper(), str(request.method))
            if verb == "get" and request.url.query.get("watch"):
                verb = "watch"
            if (verb, parts[-2], parts[-1]) not in allowed:
                denied.append(f"{request.method} {request.url}")
        return denied


@pytest.mark.parametrize("values", [
    {},
    {"jobKind": "TrainJob", "nodes": 2, "kueue": {"queueName": "research", "priorityClass": "high"}},
], ids=["pytorchjob", "trainjob-kueue"])
def test_the_gate_starts_the_evaluation_only_when_training_succeeds(values, fake_k8s):
    release = Release(fake_k8s, values)
    seen = release.training_gets()
    until(lambda: release.training_gets() >= seen + 3)  # polled while training runs...
    before = release.evaluation()
    assert before["spec"]["suspend"] is True and QUEUE not in before["metadata"]["labels"]  # ...evaluation held
    assert release.finish(KINDS[release.kind][3]) == cli.EXIT_OK
    after = release.evaluation()
    if "kueue" in values:
        # Under Kueue the Job joins the queue suspended; Kueue admits (unsuspends) it.
        assert after["metadata"]["labels"][QUEUE] == "research" and after["spec"]["suspend"] is True
        assert after["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    else:
        assert after["spec"]["suspend"] is False and QUEUE not in after["metadata"]["labels"]
    # Everything the gate asked the API is within its Role: one get on the job, one patch on the Job.
    assert release.gate_requests_outside_the_role() == []


def test_failed_training_leaves_the_evaluation_suspended(fake_k8s):
    release = Release(fake_k8s, {})
    until(lambda: release.training_gets() >= 2)
    assert release.finish("Failed") == cli.EXIT_TRAINING_FAILED
    assert release.evaluation()["spec"]["suspend"] is True


def test_the_role_check_can_fail(fake_k8s):
    release = Release(fake_k8s, {})
    release.role = {"rules": [{"verbs": ["get"], "resources": ["pytorchjobs"], "resourceNames": ["other"]}]}
    until(lambda: release.training_gets() >= 1)
    assert release.finish("Succeeded") == cli.EXIT_OK
    assert any("PATCH" in r for r in release.gate_requests_outside_the_role())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a PID namespace")
def test_as_pid_1_sigterm_stops_the_waiting_gate_at_once_and_changes_nothing(fake_k8s, tmp_path):
    """The gate as its pod runs it (PID 1, training still running): SIGTERM ends it at once with 143,
    which its Job ignores, instead of the pod's grace period; the evaluation stays suspended."""
    release = Release(fake_k8s, {})
    until(lambda: release.training_gets() >= 1)  # the in-process gate of Release is waiting too
    args = release.gate_job["spec"]["template"]["spec"]["containers"][0]["args"]
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "eval_job.gate",
                                 *args, "--kubeconfig", str(fake_k8s.kubeconfig_path), "--poll-interval", "30"],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=stderr)
    until(lambda: "waiting up to" in log.read_text() or proc.poll() is not None, timeout=60)  # imported, waiting
    assert proc.poll() is None, log.read_text()
    child = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0]
    started = time.monotonic()
    os.kill(int(child), signal.SIGTERM)  # PID 1 of the namespace, as the kubelet signals it
    proc.wait(timeout=20)
    assert proc.returncode == cli.EXIT_TERMINATED and time.monotonic() - started < 5, log.read_text()[-2000:]
    assert "stopped by SIGTERM" in log.read_text().strip().splitlines()[-1]
    assert release.evaluation()["spec"]["suspend"] is True
    pod_failure = release.gate_job["spec"]["podFailurePolicy"]["rules"]
    assert ({"action": "Ignore", "onExitCodes": {"containerName": "gate", "operator": "In", "values": [143]}}
            in pod_failure)
    release.finish("Succeeded")
