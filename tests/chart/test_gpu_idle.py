"""No GPU held idle: in every ci/ value set and with both job kinds, the only pods that can request a
GPU while training runs are the training pods. Any other GPU pod must belong to a Job created
suspended, outside any Kueue queue (Kueue would admit it at once), that a rendered gate resumes
once the training job has succeeded (tests/eval/test_gate.py runs that gate)."""

from __future__ import annotations

import pytest

from r1v_common.jobs import JOB_KINDS
from tests.chart.render import ci_value_sets, render

GPU = "nvidia.com/gpu"
TRAINING_KINDS = {"PyTorchJob", "TrainJob", "TrainingRuntime", "ClusterTrainingRuntime"}


def pod_specs(node, path="") -> list[tuple[str, dict]]:
    """Every pod spec (a map with a containers list) inside a rendered object, with where it is."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append((path, node))
        for key, value in node.items():
            found += pod_specs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += pod_specs(value, f"{path}/{i}")
    return found


def requests_gpu(pod: dict) -> bool:
    return any(float(c.get("resources", {}).get(part, {}).get(GPU, 0)) > 0
               for c in pod["containers"] + pod.get("initContainers", []) for part in ("requests", "limits"))


def gpu_pods_held_while_training(objects: list[dict]) -> list[str]:
    """Each non-training pod that would hold a GPU before the training job succeeded."""
    training = next(o for o in objects if o["kind"] in JOB_KINDS)
    ref = f"{training['kind'].lower()}/{training['metadata']['name']}"
    gates = {}  # Job name -> the training job its gate waits for
    for o in objects:
        for _, pod in pod_specs(o):
            for c in pod["containers"]:
                args = c.get("args", [])
                if c.get("command", [])[-1:] == ["eval_job.gate"] and "--resume" in args:
                    gates[args[args.index("--resume") + 1]] = args[args.index("--wait-for") + 1]
    problems = []
    for o in objects:
        where = f"{o['kind']} {o['metadata']['name']}"
        for path, pod in pod_specs(o):
            if not requests_gpu(pod) or o["kind"] in TRAINING_KINDS:
                continue
            if o["kind"] != "Job":
                problems.append(f"{where}{path}: requests a GPU from install")
            elif o["spec"].get("suspend") is not True:
                problems.append(f"{where}: requests a GPU and is not created suspended")
            elif "kueue.x-k8s.io/queue-name" in o["metadata"].get("labels", {}):
                problems.append(f"{where}: suspended but queued, so Kueue admits it at once")
            elif gates.get(o["metadata"]["name"]) != ref:
                problems.append(f"{where}: suspended, but no gate resumes it when {ref} succeeds")
    return problems


CASES = [(name, kind) for name in ci_value_sets() for kind in JOB_KINDS]


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_only_training_pods_request_a_gpu_while_training_runs(name, kind):
    values = {**ci_value_sets()[name], "jobKind": kind}
    if kind == "PyTorchJob":
        values.pop("trainJob", None)  # TrainJob-only settings
    objects = render(values)
    assert gpu_pods_held_while_training(objects) == []
    # And the evaluation is still there to start (the check above is not vacuous).
    if values.get("evaluator", {}).get("enabled", True):
        assert any(requests_gpu(p) for o in objects if o["kind"] == "Job" for _, p in pod_specs(o))


def test_the_gpu_check_can_fail():
    objects = render({})
    evaluation = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("-eval"))
    evaluation["spec"]["suspend"] = False
    assert gpu_pods_held_while_training(objects) == ["Job r1v-eval: requests a GPU and is not created suspended"]
    evaluation["spec"]["suspend"] = True
    evaluation["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "research"
    assert "Kueue admits it at once" in gpu_pods_held_while_training(objects)[0]
    del evaluation["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    objects = [o for o in objects if not o["metadata"]["name"].endswith("-eval-gate")]
    assert "no gate resumes it" in gpu_pods_held_while_training(objects)[0]


def test_kueue_queues_data_prep_at_once_and_the_evaluation_when_training_succeeded():
    objects = render(ci_value_sets()["kueue"])
    jobs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Job"}
    queued = {"kueue.x-k8s.io/queue-name": "research", "kueue.x-k8s.io/priority-class": "high"}
    assert queued.items() <= jobs["r1v-data-prep"]["metadata"]["labels"].items()
    # The priority class is immutable in Kueue, so it is there from the start; the queue comes with the resume.
    labels = jobs["r1v-eval"]["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/priority-class"] == "high" and "kueue.x-k8s.io/queue-name" not in labels
    args = jobs["r1v-eval-gate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--queue-name") + 1] == "research"
    # The gate itself stays outside the queue: it must run while training holds the quota.
    assert not any(k.startswith("kueue.x-k8s.io/") for k in jobs["r1v-eval-gate"]["metadata"]["labels"])
    assert "--queue-name" not in only_gate_args(render({}))


def only_gate_args(objects: list[dict]) -> list[str]:
    (gate,) = [o for o in objects if o["metadata"]["name"].endswith("-eval-gate")]
    return gate["spec"]["template"]["spec"]["containers"][0]["args"]
