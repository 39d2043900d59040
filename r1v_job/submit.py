"""Submit a training run from Python: the chart's PyTorchJob, through kubeflow-training's TrainingClient.

    python -m r1v_job.submit --release exp1 --namespace r1v --set nodes=2 --set storage.existingClaim=r1v-data

Values work as with `helm install`: the chart's values.yaml (charts/r1v), then each -f file, then
each --set. The PyTorchJob built here is the one the chart renders for the same values and release
name (tests/chart/test_submit.py holds the two together); only the managed-by label differs. Next
to it this creates the recipe ConfigMap and, without storage.existingClaim, the data PVC. The
evaluation Job, data preparation and monitoring objects are the chart's: install the chart for those.
After submitting it follows the master pod's log and exits 0 when the job succeeds, 1 when it fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHART = REPO / "charts" / "r1v"
CHART_NAME = "r1v"
DATA = "/data"  # the shared volume's mount point in every pod (docs/architecture.md)
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class SubmitError(Exception):
    pass


# --- values ----------------------------------------------------------------------------------------

def deep_merge(base: dict, override: dict) -> dict:
    """Helm's coalescing for maps: override wins key by key; None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(expr: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; the value is read as YAML (2 -> int, true -> bool)."""
    if "=" not in expr:
        raise SubmitError(f"--set {expr!r}: expected key=value")
    key, raw = expr.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_values(chart: Path, files: list[Path], sets: list[str]) -> dict:
    values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for f in files:
        values = deep_merge(values, yaml.safe_load(Path(f).read_text()) or {})
    for expr in sets:
        values = deep_merge(values, parse_set(expr))
    check_values(values, chart)
    return values


def check_values(values: dict, chart: Path) -> None:
    """The schema's answers to the mistakes that matter here, with the key named."""
    schema = json.loads((chart / "values.schema.json").read_text())
    unknown = sorted(set(values) - set(schema["properties"]))
    if unknown:
        raise SubmitError(f"unknown values key(s): {', '.join(unknown)}")
    for key in ("nodes", "gpusPerNode"):
        rule, value = schema["properties"][key], values.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not rule["minimum"] <= value <= rule["maximum"]:
            raise SubmitError(f"{key}: {value!r} is not an integer in {rule['minimum']}..{rule['maximum']}")
    if values["trainer"]["deepspeed"] not in ("zero2", "zero3", "none"):
        raise SubmitError(f"trainer.deepspeed: {values['trainer']['deepspeed']!r} is not zero2, zero3 or none")
    if values.get("dataPrep", {}).get("enabled"):
        raise SubmitError("dataPrep.enabled: data preparation runs from the chart (helm install); "
                          "submit needs a volume that is already filled")


# --- names (as charts/r1v/templates/_helpers.tpl) ---------------------------------------------------

def fullname(values: dict, release: str) -> str:
    name_part = values.get("nameOverride") or CHART_NAME
    if values.get("fullnameOverride"):
        name = values["fullnameOverride"]
    elif name_part in release:
        name = release
    else:
        name = f"{release}-{name_part}"
    name = name[:48].rstrip("-")
    if not _DNS1035.match(name):
        raise SubmitError(f"the name {name!r} (from the release name or fullnameOverride) must be a DNS-1035 "
                          "label: lower-case letters, digits and '-', starting with a letter")
    return name


def chart_name(values: dict) -> str:
    return (values.get("nameOverride") or CHART_NAME)[:48].rstrip("-")


def labels(values: dict, release: str, app_version: str, component: str | None = None) -> dict:
    """The chart's labels, except managed-by (Helm there, this command here) and helm.sh/chart."""
    out = {
        "app.kubernetes.io/name": chart_name(values),
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/version": app_version,
        "app.kubernetes.io/managed-by": "r1v-submit",
        "app.kubernetes.io/part-of": "r1v",
        **(values.get("commonLabels") or {}),
    }
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def _image(spec: dict, app_version: str) -> str:
    return f"{spec['repository']}:{spec.get('tag') or app_version}"


# --- the PyTorchJob (as charts/r1v/templates/pytorchjob.yaml) ----------------------------------------

def _resources(spec: dict, gpus: int) -> dict:
    return {"requests": {**(spec.get("requests") or {}), "nvidia.com/gpu": gpus},
            "limits": {**(spec.get("limits") or {}), "nvidia.com/gpu": gpus}}


def trainer_args(values: dict, name: str) -> list[str]:
    run = values.get("runName") or name
    model = values["model"].get("path") or f"{DATA}/models/{values['model']['id'].rsplit('/', 1)[-1]}"
    dataset = values["dataset"].get("path") or f"{DATA}/datasets/{values['dataset']['id'].rsplit('/', 1)[-1]}"
    args = ["-m", "r1v_job", "--config", "/etc/r1v/recipe.yaml", "--output_dir", f"{DATA}/runs/{run}",
            "--model_name_or_path", model, "--dataset_name", dataset]
    if values["trainer"]["deepspeed"] != "none":
        args += ["--deepspeed", f"/etc/r1v/{values['trainer']['deepspeed']}.json"]
    args += ["--metrics_port", str(values["monitoring"]["port"])]
    return args + [str(a) for a in values["trainer"].get("extraArgs") or []]


def pod_template(values: dict, release: str, name: str, app_version: str, role: str) -> dict:
    t = values["trainer"]
    env = [{"name": "R1V_RUN", "value": values.get("runName") or name},
           {"name": "HF_HOME", "value": f"{DATA}/hf-cache"}]
    if values.get("offline"):
        env += [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_DATASETS_OFFLINE", "value": "1"}]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    # Go templates range over maps in key order; so does this.
    env += [{"name": k, "value": str(v)} for k, v in sorted((t.get("nccl") or {}).items())]
    env += [{"name": k, "value": str(v)} for k, v in sorted((t.get("env") or {}).items())]
    ports = [{"name": "pytorchjob-port", "containerPort": t["masterPort"], "protocol": "TCP"}]
    if role == "master":
        ports.append({"name": "metrics", "containerPort": values["monitoring"]["port"], "protocol": "TCP"})
    container = {"name": "pytorch", "image": _image(values["image"]["trainer"], app_version),
                 "imagePullPolicy": values["image"]["trainer"]["pullPolicy"],
                 "command": ["torchrun"], "args": trainer_args(values, name), "env": env, "ports": ports,
                 "resources": _resources(t.get("resources") or {}, values["gpusPerNode"]),
                 "volumeMounts": [{"name": "data", "mountPath": DATA},
                                  {"name": "recipe", "mountPath": "/etc/r1v", "readOnly": True},
                                  {"name": "dshm", "mountPath": "/dev/shm"}]}
    if values.get("securityContext"):
        container["securityContext"] = values["securityContext"]
    recipe_sources = [{"configMap": {"name": f"{name}-recipe"}}]
    if values["recipe"].get("existingConfigMap"):
        recipe_sources.append({"configMap": {"name": values["recipe"]["existingConfigMap"], "items": [
            {"key": values["recipe"]["existingConfigMapKey"], "path": "recipe.yaml"}]}})
    claim = values["storage"].get("existingClaim") or f"{name}-data"
    spec: dict[str, Any] = {"automountServiceAccountToken": False}
    if values.get("imagePullSecrets"):
        spec["imagePullSecrets"] = values["imagePullSecrets"]
    if values.get("podSecurityContext"):
        spec["securityContext"] = values["podSecurityContext"]
    gang = values.get("gangScheduling") or {}
    if gang.get("enabled") and gang.get("schedulerName"):
        spec["schedulerName"] = gang["schedulerName"]
    if t.get("priorityClassName"):
        spec["priorityClassName"] = t["priorityClassName"]
    selector = dict(t.get("nodeSelector") or {})
    if t.get("gpuProduct"):
        selector["nvidia.com/gpu.product"] = t["gpuProduct"]
    for key, value in (("nodeSelector", selector), ("affinity", t.get("affinity")), ("tolerations", t.get("tolerations"))):
        if value:
            spec[key] = value
    spec["containers"] = [container]
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                       {"name": "recipe", "projected": {"sources": recipe_sources}},
                       {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": t["shmSize"]}}]
    metadata: dict[str, Any] = {"labels": {"app.kubernetes.io/name": chart_name(values),
                                           "app.kubernetes.io/instance": release,
                                           "app.kubernetes.io/component": "trainer", **(t.get("podLabels") or {})}}
    if t.get("podAnnotations"):
        metadata["annotations"] = t["podAnnotations"]
    return {"metadata": metadata, "spec": spec}


def build_pytorchjob_dict(values: dict, release: str, namespace: str | None = None,
                          app_version: str = "0.1.0") -> dict:
    name = fullname(values, release)
    nodes, policy, gang = values["nodes"], values["runPolicy"], values.get("gangScheduling") or {}
    run_policy: dict[str, Any] = {"cleanPodPolicy": policy["cleanPodPolicy"], "backoffLimit": policy["backoffLimit"]}
    if policy.get("activeDeadlineSeconds"):
        run_policy["activeDeadlineSeconds"] = policy["activeDeadlineSeconds"]
    if policy.get("ttlSecondsAfterFinished") is not None:
        run_policy["ttlSecondsAfterFinished"] = policy["ttlSecondsAfterFinished"]
    if gang.get("enabled"):
        sched: dict[str, Any] = {"minAvailable": gang.get("minAvailable") or nodes}
        for key in ("queue", "priorityClass", "scheduleTimeoutSeconds"):
            if gang.get(key):
                sched[key] = gang[key]
        run_policy["schedulingPolicy"] = sched
    specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure",
                        "template": pod_template(values, release, name, app_version, "master")}}
    if nodes > 1:  # the operator rejects a Worker spec with 0 replicas
        specs["Worker"] = {"replicas": nodes - 1, "restartPolicy": "OnFailure",
                           "template": pod_template(values, release, name, app_version, "worker")}
    metadata = {"name": name, "labels": labels(values, release, app_version, "trainer")}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": metadata,
            "spec": {"nprocPerNode": str(values["gpusPerNode"]), "runPolicy": run_policy, "pytorchReplicaSpecs": specs}}


def build_pytorchjob(values: dict, release: str, namespace: str | None = None, app_version: str = "0.1.0"):
    """The job as the typed model TrainingClient.create_job takes (KubeflowOrgV1PyTorchJob)."""
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    return ApiClient().deserialize(FakeResponse(build_pytorchjob_dict(values, release, namespace, app_version)),
                                   "KubeflowOrgV1PyTorchJob")


# --- the objects next to it ------------------------------------------------------------------------

def recipe_configmap(values: dict, release: str, name: str, recipe_file: Path | None, recipes_dir: Path,
                     app_version: str) -> dict:
    data = {"zero2.json": (recipes_dir / "zero2.json").read_text(),
            "zero3.json": (recipes_dir / "zero3.json").read_text()}
    if not values["recipe"].get("existingConfigMap"):
        if recipe_file is not None:
            data["recipe.yaml"] = Path(recipe_file).read_text()
        elif values["recipe"].get("inline"):
            data["recipe.yaml"] = yaml.safe_dump(values["recipe"]["inline"], sort_keys=True)
        else:
            data["recipe.yaml"] = (recipes_dir / "r1v_qwen2vl_2b_clevr.yaml").read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-recipe", "labels": labels(values, release, app_version, "trainer")},
            "data": data}


def data_claim(values: dict, release: str, name: str, app_version: str) -> dict | None:
    storage = values["storage"]
    if storage.get("existingClaim"):
        return None
    meta: dict[str, Any] = {"name": f"{name}-data", "labels": labels(values, release, app_version, "storage")}
    if storage.get("keep"):
        meta["annotations"] = {"helm.sh/resource-policy": "keep"}
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": storage["size"]}}}
    if storage.get("storageClassName"):
        spec["storageClassName"] = storage["storageClassName"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


# --- submit and follow -----------------------------------------------------------------------------

def submit(client, values: dict, release: str, namespace: str, recipe_file: Path | None = None,
           recipes_dir: Path = REPO / "recipes", app_version: str = "0.1.0") -> str:
    """Create the ConfigMap, the PVC (unless existing) and the PyTorchJob; returns the job name."""
    from kubernetes.client.rest import ApiException

    name = fullname(values, release)
    core = client.core_api
    cm = recipe_configmap(values, release, name, recipe_file, recipes_dir, app_version)
    try:
        core.create_namespaced_config_map(namespace, cm)
    except ApiException as e:
        if e.status != 409:
            raise
        core.replace_namespaced_config_map(cm["metadata"]["name"], namespace, cm)
    pvc = data_claim(values, release, name, app_version)
    if pvc is not None:
        try:
            core.create_namespaced_persistent_volume_claim(namespace, pvc)
        except ApiException as e:
            if e.status != 409:  # an existing claim from an earlier run is reused, data and all
                raise
    client.create_job(job=build_pytorchjob(values, release, namespace, app_version=app_version), namespace=namespace)
    return name


def follow(client, name: str, namespace: str, poll_seconds: float = 5.0, timeout_seconds: float = 7 * 24 * 3600) -> bool:
    """Stream the master pod's log until it ends; True when the job Succeeded, False when it Failed."""
    deadline = time.monotonic() + timeout_seconds
    streamed = False
    while time.monotonic() < deadline:
        job = client.get_job(name, namespace=namespace)
        conditions = {c.type: c.status for c in (job.status.conditions if job.status and job.status.conditions else [])}
        if conditions.get("Succeeded") == "True":
            return True
        if conditions.get("Failed") == "True":
            return False
        pods = client.get_job_pods(name, namespace=namespace, is_master=True)
        if not streamed and any(p.status and p.status.phase not in (None, "Pending") for p in pods):
            # get_job_logs(follow=True) prints "[Pod NAME]: line" until the container exits.
            client.get_job_logs(name, namespace=namespace, is_master=True, follow=True)
            streamed = True
            continue
        time.sleep(poll_seconds)
    raise TimeoutError(f"PyTorchJob {namespace}/{name} did not finish in {timeout_seconds:.0f} s")


def main(argv: list[str] | None = None, client=None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1v_job.submit", description=__doc__.splitlines()[0])
    p.add_argument("--release", default="r1v", help="plays Helm's release name (object-name prefix)")
    p.add_argument("--namespace", "-n", default=None, help="default: the kube context's namespace")
    p.add_argument("--chart", type=Path, default=DEFAULT_CHART, help="chart whose values.yaml holds the defaults")
    p.add_argument("--values", "-f", type=Path, action="append", default=[])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--recipe", type=Path, help="recipe file for the ConfigMap (default: recipe.inline, else the seed recipe)")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the objects as YAML and submit nothing")
    p.add_argument("--no-follow", action="store_true", help="return after submitting")
    a = p.parse_args(argv)
    try:
        values = load_values(a.chart, a.values, a.sets)
        chart_meta = yaml.safe_load((a.chart / "Chart.yaml").read_text())
        app_version = str(chart_meta.get("appVersion", chart_meta["version"]))
        if a.dry_run:
            name = fullname(values, a.release)
            objs = [recipe_configmap(values, a.release, name, a.recipe, REPO / "recipes", app_version),
                    data_claim(values, a.release, name, app_version),
                    build_pytorchjob_dict(values, a.release, a.namespace, app_version=app_version)]
            yaml.safe_dump_all([o for o in objs if o], sys.stdout, sort_keys=False)
            return 0
        if client is None:
            from kubeflow.training import TrainingClient
            client = TrainingClient(config_file=a.kubeconfig, context=a.context)
        namespace = a.namespace or client.namespace
        name = submit(client, values, a.release, namespace, a.recipe, app_version=app_version)
        print(f"submitted PyTorchJob {namespace}/{name}: {values['nodes']} pod(s) x {values['gpusPerNode']} GPU(s)",
              flush=True)
        if a.no_follow:
            print(f"follow with: kubectl -n {namespace} logs -f {name}-master-0 -c pytorch")
            return 0
        ok = follow(client, name, namespace)
        print(f"PyTorchJob {namespace}/{name} {'succeeded' if ok else 'failed'}", flush=True)
        return 0 if ok else 1
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
