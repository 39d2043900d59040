"""jobKind: TrainJob (Kubeflow Trainer v2.3): the same pods as the PyTorchJob, on the chart's
TrainingRuntime or on an existing ClusterTrainingRuntime; the evaluator, RBAC, Service, monitors,
NOTES and Kueue follow the kind. Strict CRD validation of every shape is in test_render.py."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from tests.chart.render import (claim_of, container, kinds, notes, only, render, replica_pods,
                                           validation_problems)
from tests.outside import require

TJ = {"jobKind": "TrainJob"}
CLUSTER = {"jobKind": "TrainJob", "trainJob": {"clusterTrainingRuntime": "torch-distributed"}}


def runtime_pod(objects) -> dict:
    (rjob,) = only(objects, "TrainingRuntime")["spec"]["template"]["spec"]["replicatedJobs"]
    return rjob["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [
    {"nodes": 1}, {"nodes": 2, "gpusPerNode": 4}, {"nodes": 4, "storage": {"existingClaim": "shared"}},
    {"nodes": 2, "kueue": {"queueName": "q", "priorityClass": "high"}}, {"nodes": 3, "dataPrep": {"enabled": True}},
    {"nodes": 2, "gangScheduling": {"enabled": True, "schedulerName": "volcano"}},
    {"nodes": 2, **CLUSTER}, {"nodes": 2, **CLUSTER, "monitoring": {"kind": "PodMonitor"}},
], ids=lambda v: ",".join(f"{k}" for k in v))
def test_trainjob_shapes_validate_against_the_trainer_crds(values):
    objects = render({**TJ, **values})
    assert "PyTorchJob" not in kinds(objects)
    assert validation_problems(objects) == []


@pytest.mark.parametrize("nodes, gpus", [(1, 8), (2, 8), (4, 4)])
def test_world_size_is_nodes_times_gpus(nodes, gpus):
    objects = render({**TJ, "nodes": nodes, "gpusPerNode": gpus})
    trainer = only(objects, "TrainJob")["spec"]["trainer"]
    assert trainer["numNodes"] * trainer["numProcPerNode"] == nodes * gpus
    assert only(objects, "TrainingRuntime")["spec"]["mlPolicy"] == {"numNodes": nodes, "torch": {}}
    res = trainer["resourcesPerNode"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == gpus
    # torchrun takes its topology from the Trainer's PET_* env: the args must not pin it.
    assert not any(a.startswith(("--nnodes", "--nproc", "--node_rank", "--master")) for a in trainer["args"])


def test_trainjob_runs_the_same_trainer_as_the_pytorchjob():
    values = {"nodes": 2, "runName": "exp1", "trainer": {"extraArgs": ["--max_steps", "50"], "env": {"A": "1"}}}
    master = container(replica_pods(only(render(values), "PyTorchJob"))["Master"], "pytorch")
    trainer = only(render({**TJ, **values}), "TrainJob")["spec"]["trainer"]
    assert trainer["command"] == master["command"] and trainer["args"] == master["args"]
    # except the launcher's restart budget: a TrainJob's JobSet counts its restarts itself (maxRestarts)
    # The same budget, keyed by pod name on a PyTorchJob (its pods keep their names), by node rank
    # on a TrainJob; each render draws its own install id.
    per_kind = {"R1V_POD_NAME", "R1V_INSTALL_ID"}
    assert ([e for e in trainer["env"] if e["name"] not in per_kind]
            == [e for e in master["env"] if e["name"] not in per_kind])
    assert per_kind <= {e["name"] for e in master["env"]} and "R1V_INSTALL_ID" in {e["name"] for e in trainer["env"]}
    assert trainer["image"] == master["image"]


def test_the_charts_runtime_holds_the_pod_claim_shm_security_and_scheduling():
    objects = render({**TJ, "nodes": 2, "storage": {"existingClaim": "shared"}, "dataPrep": {"enabled": True},
                      "trainer": {"priorityClassName": "train", "runtimeClassName": "nvidia"}})
    ref = only(objects, "TrainJob")["spec"]["runtimeRef"]
    runtime = only(objects, "TrainingRuntime")
    assert ref == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": runtime["metadata"]["name"]}
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    # The Trainer's torch plugin injects PET_* into the container "node" of the replicated job "node".
    assert rjob["name"] == "node" and rjob["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    pod = runtime_pod(objects)
    node = container(pod, "node")
    assert {m["mountPath"]: m["name"] for m in node["volumeMounts"]}["/dev/shm"] == "dshm"
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["medium"] == "Memory"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert node["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["priorityClassName"] == "train" and pod["runtimeClassName"] == "nvidia"
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    # One claim in every pod: training, evaluation, data prep and the helm test.
    pods = [pod, only(objects, "Job", "-eval")["spec"]["template"]["spec"],
            only(objects, "Job", "-data-prep")["spec"]["template"]["spec"], only(objects, "Pod")["spec"]]
    assert {claim_of(p) for p in pods} == {"shared"}


def test_exitcode_restarts_map_to_jobset_failure_rules():
    spec = only(render(TJ), "TrainingRuntime")["spec"]["template"]["spec"]
    assert spec["failurePolicy"]["maxRestarts"] == 3  # runPolicy.backoffLimit
    assert spec["failurePolicy"]["rules"] == [
        {"name": "permanent-error", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]
    job = spec["replicatedJobs"][0]["template"]["spec"]
    fail, retry, disrupted = job["podFailurePolicy"]["rules"]
    # The Training Operator's rule: 1-127 permanent (the launcher's 2), 128-255 retried (143
    # preempted, 200 crashed, kills) in a new pod: never a JobSet restart that maxRestarts would
    # count for the whole run; the launcher counts crashes per checkpoint, never preemptions.
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["containerName"] == "node"
    assert fail["onExitCodes"]["values"] == list(range(1, 128))
    assert retry["action"] == "Ignore" and retry["onExitCodes"]["values"] == list(range(128, 256))
    assert disrupted["action"] == "Ignore" and job["backoffLimit"] == 0
    env = {e["name"]: e.get("value") for e in only(render(TJ), "TrainJob")["spec"]["trainer"]["env"]}
    assert env["R1V_MAX_RESTARTS"] == "3" and env["R1V_INSTALL_ID"] and "R1V_POD_NAME" not in env
    runtime = only(render({**TJ, "trainer": {"restartPolicy": "OnFailure"}}), "TrainingRuntime")
    on_failure = runtime["spec"]["template"]["spec"]
    assert "rules" not in on_failure["failurePolicy"]
    assert "podFailurePolicy" not in on_failure["replicatedJobs"][0]["template"]["spec"]


def test_evaluation_gate_waits_on_the_trainjob_and_its_role_reads_only_that_trainjob():
    objects = render(TJ)
    args = only(objects, "Job", "-eval-gate")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--wait-for") + 1] == "trainjob/r1v"
    rule = only(objects, "Role")["rules"][0]
    assert rule == {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "resourceNames": ["r1v"],
                    "verbs": ["get"]}
    env = {e["name"]: e.get("value") for e in only(objects, "Pod")["spec"]["containers"][0]["env"]}
    assert env["JOB_API"] == "trainer.kubeflow.org/v1alpha1/trainjobs"
    rule = only(render({}), "Role")["rules"][0]
    assert rule["resources"] == ["pytorchjobs"]


def test_metrics_service_and_pod_monitor_select_the_rank_zero_pod():
    objects = render({**TJ, "nodes": 2})
    svc = only(objects, "Service", "-metrics")
    assert svc["spec"]["selector"] == {"jobset.sigs.k8s.io/jobset-name": "r1v",
                                       "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                       "batch.kubernetes.io/job-completion-index": "0"}
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert ({"name": "metrics", "containerPort": 8000, "protocol": "TCP"}
            in container(runtime_pod(objects), "node")["ports"])
    pm = only(render({**TJ, "monitoring": {"kind": "PodMonitor"}}), "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/job-completion-index"] == "0"
    # On a ClusterTrainingRuntime no port of ours is declared: by number.
    objects = render({**CLUSTER, "monitoring": {"kind": "PodMonitor"}})
    assert only(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["portNumber"] == 8000
    assert only(objects, "Service", "-metrics")["spec"]["ports"][0]["targetPort"] == 8000


def test_cluster_runtime_patches_target_what_torch_distributed_declares():
    objects = render({**CLUSTER, "nodes": 2, "storage": {"existingClaim": "shared"}})
    assert "TrainingRuntime" not in kinds(objects)
    job = only(objects, "TrainJob")
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": "torch-distributed"}
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    # Trainer v2.3's own runtime (a Helm template: its template lines are dropped to read it).
    text = require("torch-distributed-runtime").read_text()
    upstream = yaml.safe_load("\n".join(line for line in text.splitlines() if "{{" not in line))
    (up_job,) = upstream["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == up_job["name"]
    pod = rjob["template"]["spec"]["template"]
    up_containers = [c["name"] for c in up_job["template"]["spec"]["template"]["spec"]["containers"]]
    assert [c["name"] for c in pod["spec"]["containers"]] == up_containers[:1] == ["node"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"  # what the monitors select
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "shared" and "dshm" in volumes
    assert {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]} >= {"/data", "/dev/shm", "/etc/r1v"}


@pytest.mark.parametrize("values, key", [
    ({"trainer": {"priorityClassName": "high"}}, "trainer.priorityClassName"),
    ({"trainer": {"runtimeClassName": "nvidia"}}, "trainer.runtimeClassName"),
    ({"trainer": {"hostNetwork": True}}, "trainer.hostNetwork"),
    ({"trainer": {"extraEnvFrom": [{"secretRef": {"name": "s"}}]}}, "trainer.extraEnvFrom"),
    ({"gangScheduling": {"enabled": True}}, "gangScheduling.enabled"),
    ({"runPolicy": {"ttlSecondsAfterFinished": 60}}, "runPolicy.ttlSecondsAfterFinished"),
])
def test_values_a_cluster_runtime_cannot_take_fail_naming_the_key(values, key):
    with pytest.raises(helm.HelmRenderError,
                       match=f"{key} is set, but trainJob.clusterTrainingRuntime=torch-distributed"):
        render({**CLUSTER, **values})
    assert validation_problems(render({**TJ, **values})) == []  # the chart's runtime takes them


@pytest.mark.parametrize("values", [{}, TJ], ids=["pytorchjob", "trainjob"])
def test_kueue_labels_the_training_job_of_either_kind(values):
    objects = render({**values, "kueue": {"queueName": "research", "priorityClass": "high"}})
    job = only(objects, values.get("jobKind", "PyTorchJob"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert not any(k.startswith("kueue.x-k8s.io/") for k in only(render(values), values.get("jobKind", "PyTorchJob"))
                   ["metadata"]["labels"])


def test_notes_give_the_trainjob_commands():
    text = notes({**TJ, "nodes": 2, "kueue": {"queueName": "research"}}, name="exp", namespace="team-a")
    lines = [line.strip() for line in text.splitlines()]
    assert "kubectl -n team-a get trainjob exp-r1v -w" in lines
    assert ("kubectl -n team-a logs -f -l jobset.sigs.k8s.io/jobset-name=exp-r1v,"
            "batch.kubernetes.io/job-completion-index=0 -c node") in lines
    assert "kubectl -n team-a wait --for=condition=Complete trainjob/exp-r1v --timeout=24h" in lines
    assert not any("pytorchjob" in line or "master-0" in line for line in lines)
    assert any("LocalQueue research" in line for line in lines)
    assert "TrainingRuntime exp-r1v" in text
    assert "ClusterTrainingRuntime torch-distributed" in notes({**CLUSTER})
