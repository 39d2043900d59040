"""`python -m r1v_job.submit` builds the chart's PyTorchJob and submits it through TrainingClient.

The API server here is kmock's KubernetesEmulator: a fake, in-memory Kubernetes API on a local
port (no admission webhooks, no operator, no scheduler). It stores what the real client sends, so
the test checks the requests and the stored objects, and plays the operator's part by hand
(a Running master pod, a log, a final condition).
"""

from __future__ import annotations

import asyncio
import copy
import threading

import kmock
import pytest
import yaml
from kubeflow.training import TrainingClient
from kubeflow.training.api_client import ApiClient
from kubernetes import client as k8s

from tests.chart.r1v_chart_helpers import CHART, ci_value_sets, only, render
from r1v_job import submit

PODS = kmock.resource("", "v1", "pods")
JOBS = kmock.resource("kubeflow.org", "v1", "pytorchjobs")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")


def _values(overrides: dict) -> dict:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return submit.deep_merge(defaults, overrides)


def _comparable(job: dict) -> dict:
    """Drop what legitimately differs (who manages it) and spell quantities one way (8 vs "8")."""
    job = copy.deepcopy(job)
    for key in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
        job["metadata"]["labels"].pop(key, None)
    job["metadata"].pop("namespace", None)
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        for c in spec["template"]["spec"]["containers"] + spec["template"]["spec"].get("initContainers", []):
            for part in ("requests", "limits"):
                c.get("resources", {})[part] = {k: str(v) for k, v in c.get("resources", {}).get(part, {}).items()}
    return job


SETS = {name: v for name, v in {"defaults": {}, **ci_value_sets()}.items()
        if not (v.get("dataPrep") or {}).get("enabled")}


@pytest.mark.parametrize("name", sorted(SETS))
def test_submit_builds_the_chart_pytorchjob(name):
    chart_job = only(render(SETS[name], name="exp"), "PyTorchJob")
    model = submit.build_pytorchjob(_values(SETS[name]), "exp", "r1v")
    assert type(model).__name__ == "KubeflowOrgV1PyTorchJob"  # what TrainingClient.create_job accepts
    assert _comparable(ApiClient().sanitize_for_serialization(model)) == _comparable(chart_job)


def test_the_comparison_would_notice_a_difference():
    chart_job = only(render({"nodes": 2}, name="exp"), "PyTorchJob")
    built = ApiClient().sanitize_for_serialization(submit.build_pytorchjob(_values({"nodes": 3}), "exp"))
    assert _comparable(built) != _comparable(chart_job)


@pytest.mark.parametrize("argv, message", [
    (["--set", "nodes=0"], "nodes"),
    (["--set", "gpusPerNode=9"], "gpusPerNode"),
    (["--set", "nodez=2"], "nodez"),
    (["--set", "dataPrep.enabled=true"], "dataPrep.enabled"),
    (["--release", "9lives"], "DNS-1035"),
])
def test_bad_values_are_refused_before_anything_is_sent(argv, message, capsys):
    assert submit.main(argv + ["--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_dry_run_prints_configmap_claim_and_job(capsys):
    assert submit.main(["--release", "exp", "-n", "ns", "--set", "nodes=2", "--dry-run"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PersistentVolumeClaim", "PyTorchJob"]
    assert docs[2]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1


# --- against the fake API server ---------------------------------------------------------------------

class FakeCluster:
    """kmock's emulator served from a background event loop, for the synchronous Kubernetes client."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "kmock did not start"

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self):
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.api, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def client(self, namespace: str) -> TrainingClient:
        cfg = k8s.Configuration()
        cfg.host = self.url
        return TrainingClient(client_configuration=cfg, namespace=namespace)

    def close(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def cluster():
    fake = FakeCluster()
    yield fake
    fake.close()


def _play_operator(cluster, ns: str, job: str, outcome: str, lines: bytes):
    """A Running master pod whose log, once read to the end, leaves the job in `outcome`."""
    pod = f"{job}-master-0"
    cluster.api.objects[PODS, ns, pod] = {
        "apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"},
        "metadata": {"name": pod, "namespace": ns, "labels": {"training.kubeflow.org/job-name": job,
                                                              "training.kubeflow.org/job-role": "master"}}}

    def log(_request):
        cluster.api.objects[JOBS, ns, job].patch({"status": {"conditions": [{"type": outcome, "status": "True"}]}})
        return lines
    cluster.api[f"get /api/v1/namespaces/{ns}/pods/{pod}/log"] << log


def test_submit_creates_the_chart_job_and_follows_the_master_log(cluster, capsys):
    _play_operator(cluster, "team-a", "exp-r1v", "Succeeded", b"step 1/100 reward 0.41\nstep 2/100 reward 0.55\n")
    argv = ["--release", "exp", "-n", "team-a", "--set", "nodes=2", "--set", "runName=exp1"]
    assert submit.main(argv, client=cluster.client("team-a")) == 0

    out = capsys.readouterr().out
    assert "[Pod exp-r1v-master-0]: step 2/100 reward 0.55" in out
    assert "PyTorchJob team-a/exp-r1v succeeded" in out

    stored = dict(cluster.api.objects[JOBS, "team-a", "exp-r1v"].raw)
    chart_job = only(render({"nodes": 2, "runName": "exp1"}, name="exp", namespace="team-a"), "PyTorchJob")
    assert _comparable({k: v for k, v in stored.items() if k != "status"}) == _comparable(chart_job)

    cm = cluster.api.objects[CONFIGMAPS, "team-a", "exp-r1v-recipe"].raw
    chart_cm = only(render({}, name="exp"), "ConfigMap", "-recipe")
    assert cm["data"] == chart_cm["data"]
    pvc = cluster.api.objects[PVCS, "team-a", "exp-r1v-data"].raw
    assert pvc["spec"] == only(render({}, name="exp"), "PersistentVolumeClaim")["spec"]
    log_requests = [r for r in cluster.api if r.method == "GET" and str(r.url).split("?")[0].endswith("/log")]
    assert log_requests and "follow=True" in str(log_requests[0].url) and "container=pytorch" in str(log_requests[0].url)


def test_submit_reports_a_failed_job_and_creates_no_claim_for_an_existing_one(cluster, capsys):
    _play_operator(cluster, "ns", "exp-r1v", "Failed", b"CUDA out of memory\n")
    argv = ["--release", "exp", "-n", "ns", "--set", "storage.existingClaim=shared"]
    assert submit.main(argv, client=cluster.client("ns")) == 1
    assert "PyTorchJob ns/exp-r1v failed" in capsys.readouterr().out
    assert not [key for key in cluster.api.objects if key[0] == PVCS]
    stored = cluster.api.objects[JOBS, "ns", "exp-r1v"].raw
    claim = stored["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"][0]
    assert claim == {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}


def test_no_follow_returns_after_submitting(cluster, capsys):
    assert submit.main(["--release", "exp", "-n", "ns", "--no-follow"], client=cluster.client("ns")) == 0
    assert (JOBS, "ns", "exp-r1v") in cluster.api.objects
    assert "kubectl -n ns logs -f exp-r1v-master-0 -c pytorch" in capsys.readouterr().out
