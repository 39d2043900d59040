"""Creating the rendered objects and following the training job, through the kubernetes client
(and kubeflow-training's TrainingClient for the PyTorchJob); the training job kinds and the waiter
are r1v_common.jobs', shared with the evaluator."""

from __future__ import annotations

import json
import sys
from typing import Any

from r1v_common.jobs import JOB_KINDS, JobFailed, JobTimeout, wait_for_job
from r1v_submit.chart import SubmitError

# Kinds the chart renders -> REST plural (namespaced, all of them). tests/submit/test_submit.py
# renders every ci/ value set and fails on a kind missing here.
PLURALS = {
    "ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings",
    "ConfigMap": "configmaps", "PersistentVolumeClaim": "persistentvolumeclaims", "Service": "services",
    "Job": "jobs", "TrainingRuntime": "trainingruntimes", **{k.kind: k.plural for k in JOB_KINDS.values()},
    "ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules",
    "NetworkPolicy": "networkpolicies", "CronJob": "cronjobs",
}
# Helm's install order (its kind sorter: built-in kinds first, Jobs before any custom kind), so that what
# a pod mounts or runs as exists before the pod, and the data-prep Job joins a Kueue queue before the
# training job does.
ORDER = ["NetworkPolicy", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "Service",
         "Job", "CronJob", "TrainingRuntime", "PyTorchJob", "TrainJob", "ServiceMonitor", "PodMonitor",
         "PrometheusRule"]
# One release is one run: an existing job of the same name is an error, never replaced.
NEVER_REPLACED = {*JOB_KINDS, "Job"}


def _path(obj: dict, namespace: str) -> str:
    group_version = obj["apiVersion"]
    plural = PLURALS.get(obj["kind"])
    if plural is None:
        raise SubmitError(f"the chart rendered a {obj['kind']}, which r1v_submit does not know how to create")
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{root}/namespaces/{namespace}/{plural}"


class Cluster:
    """The API server behind a kubernetes ApiClient."""

    def __init__(self, api_client, training_client=None):
        self.api = api_client
        self._training_client = training_client

    def api_versions(self) -> list[str]:
        """What Helm's .Capabilities.APIVersions would hold for this cluster (group/version). The
        first call to the API server: an unreachable server or a refused identity ends here, in one line."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        found = ["v1"]
        try:
            groups = client.ApisApi(self.api).get_api_versions().groups or []
        except ApiException as e:
            raise SubmitError(f"API server {self.api.configuration.host}: {e.status} {e.reason}: {_message(e)}") from e
        except HTTPError as e:
            reason = getattr(e, "reason", None) or e
            raise SubmitError(f"cannot reach the API server at {self.api.configuration.host}: "
                              f"{' '.join(str(reason).split())}") from e
        for group in groups:
            found += [v.group_version for v in group.versions]
        return found

    def kube_version(self) -> str:
        """The API server's version (gitVersion), Helm's .Capabilities.KubeVersion."""
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return self._call("GET", "/version")["gitVersion"]
        except ApiException as e:
            raise SubmitError(f"API server {self.api.configuration.host}: {e.status} {e.reason}: {_message(e)}") from e
        except HTTPError as e:
            raise SubmitError(f"cannot reach the API server at {self.api.configuration.host}: "
                              f"{' '.join(str(getattr(e, 'reason', None) or e).split())}") from e

    def _call(self, method: str, path: str, body=None, content_type: str = "application/json"):
        return self.api.call_api(path, method, body=body, header_params={"Content-Type": content_type,
                                                                          "Accept": "application/json"},
                                 response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True)

    def plan(self, objects: list[dict], namespace: str) -> dict[tuple[str, str], bool]:
        """Reads every object before anything is written: (kind, name) -> whether it exists. A job
        that exists already, or a create/patch the identity's RBAC does not allow, refuses the whole
        submission, so a refused submission writes nothing (the running job's recipe, scripts and
        RBAC stay as they are)."""
        from kubernetes.client.rest import ApiException

        exists = {}
        for obj in objects:
            ns, name = obj["metadata"].get("namespace", namespace), obj["metadata"]["name"]
            try:
                self._call("GET", f"{_path(obj, ns)}/{name}")
                exists[obj["kind"], name] = True
            except ApiException as e:
                if e.status != 404:
                    raise SubmitError(f"reading {obj['kind']} {ns}/{name}: {e.status} {e.reason}: {_message(e)}") from e
                exists[obj["kind"], name] = False
        taken = sorted(((kind == "Job", f"{kind} {namespace}/{name}") for (kind, name), found in exists.items()
                        if found and kind in NEVER_REPLACED))
        if taken:
            also = f" (and {', '.join(t for _, t in taken[1:])})" if len(taken) > 1 else ""
            raise SubmitError(f"{taken[0][1]} already exists{also}: one release is one run; nothing was changed. "
                              "Pick another "
                              "--release (or fullnameOverride), or delete it first (docs/operations.md, \"Run again\")")
        for obj in objects:
            self._check_allowed(obj, namespace, "patch" if exists[obj["kind"], obj["metadata"]["name"]] else "create")
        return exists

    def _check_allowed(self, obj: dict, namespace: str, verb: str) -> None:
        """Asks the API server (SelfSubjectAccessReview) whether this identity may `verb` the object's
        kind, so that a missing RBAC permission refuses the submission before the first write. A
        server without the authorization API, or a claim that is kept, is not asked."""
        if obj["kind"] == "PersistentVolumeClaim" and verb == "patch":
            return
        ns = obj["metadata"].get("namespace", namespace)
        self._ask(ns, verb, obj["apiVersion"].rpartition("/")[0], PLURALS[obj["kind"]])
        if obj["kind"] == "Role":
            # RBAC's escalation check: whoever writes a Role must hold every permission it grants.
            for rule in obj.get("rules", []):
                for group in rule.get("apiGroups", [""]):
                    for resource in rule.get("resources", []):
                        for granted in rule.get("verbs", []):
                            for name in rule.get("resourceNames") or [None]:
                                self._ask(ns, granted, group, resource, name,
                                          why=f"the chart's Role {obj['metadata']['name']} grants it")

    def _ask(self, ns: str, verb: str, group: str, resource: str, name: str | None = None, why: str = "") -> None:
        from kubernetes.client.rest import ApiException

        attributes = {"namespace": ns, "verb": verb, "group": group, "resource": resource,
                      **({"name": name} if name else {})}
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attributes}}
        try:
            answer = self._call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        except ApiException as e:
            if e.status in (404, 405):
                return
            raise SubmitError(f"asking whether this identity may {verb} {resource} in {ns}: "
                              f"{e.status} {e.reason}: {_message(e)}") from e
        status = (answer or {}).get("status") or {}
        if status.get("allowed") is False or status.get("denied"):
            reason = status.get("reason") or "no RBAC rule allows it"
            raise SubmitError(f"this identity may not {verb} {resource}{'.' + group if group else ''}"
                              f"{' ' + name if name else ''} in namespace {ns} ({reason}{'; ' + why if why else ''}): "
                              "nothing was changed; ask for a Role that allows it, or submit with another "
                              "--kubeconfig/--context")

    def create(self, obj: dict, namespace: str, exists: bool = False) -> str:
        """Creates obj; returns "created", "kept" (an existing claim: data and checkpoints stay) or
        "updated" (other existing objects are merge-patched). An existing job is an error."""
        from kubernetes.client.rest import ApiException

        ns = obj["metadata"].get("namespace", namespace)
        path = _path(obj, ns)
        name = f"{obj['kind']} {ns}/{obj['metadata']['name']}"
        if not exists:
            try:
                if obj["kind"] == "PyTorchJob" and self._training_client is not None:
                    self._create_pytorchjob(obj, ns)
                else:
                    self._call("POST", path, obj)
                return "created"
            except ApiException as e:
                if e.status != 409:
                    raise SubmitError(f"creating {name}: {e.status} {e.reason}: {_message(e)}") from e
            except RuntimeError as e:  # TrainingClient wraps the API error
                cause = e.__cause__
                if getattr(cause, "status", None) != 409:
                    raise SubmitError(f"creating {name}: {str(e).splitlines()[0]}") from e
        if obj["kind"] in NEVER_REPLACED:
            raise SubmitError(f"{name} already exists: one release is one run; pick another --release "
                              "(or fullnameOverride) or delete it first")
        if obj["kind"] == "PersistentVolumeClaim":
            return "kept"
        try:
            self._call("PATCH", f"{path}/{obj['metadata']['name']}", obj, "application/merge-patch+json")
        except ApiException as e:
            raise SubmitError(f"updating {name}: {e.status} {e.reason}: {_message(e)}") from e
        return "updated"

    def _create_pytorchjob(self, obj: dict, namespace: str) -> None:
        """Through kubeflow-training: the typed model TrainingClient.create_job takes."""
        from kubeflow.training.api_client import ApiClient
        from kubeflow.training.utils.utils import FakeResponse

        model = ApiClient().deserialize(FakeResponse(obj), "KubeflowOrgV1PyTorchJob")
        self._training_client.create_job(job=model, namespace=namespace)

    def job(self, kind: str, name: str, namespace: str) -> dict:
        job_kind = JOB_KINDS[kind]
        return self._call("GET", f"/apis/{job_kind.api_version}/namespaces/{namespace}/{job_kind.plural}/{name}")

    def follow(self, kind: str, name: str, namespace: str, poll_seconds: float = 5.0,
               timeout_seconds: float = 7 * 24 * 3600, out=None) -> bool:
        """Streams the rank-0 pod's log until it ends; True when the job succeeded, False when it failed."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        job_kind = JOB_KINDS[kind]
        streamed = set()

        def stream_rank_zero(job: dict) -> bool:
            """Streams one rank-0 pod not streamed yet to its end; False when there is none to stream."""
            for pod in core.list_namespaced_pod(namespace, label_selector=job_kind.rank_zero.format(name=name)).items:
                # By uid: a PyTorchJob pod that ExitCode recreated keeps its name (JOB-master-0).
                incarnation = pod.metadata.uid or pod.metadata.name
                if incarnation in streamed or (pod.status and pod.status.phase in (None, "Pending")):
                    continue
                streamed.add(incarnation)
                stream = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=job_kind.container,
                                                      follow=True, _preload_content=False)
                for line in stream.stream():
                    for text in line.decode(errors="replace").splitlines():
                        print(f"[Pod {pod.metadata.name}]: {text}", file=out or sys.stdout, flush=True)
                return True
            return False

        try:
            wait_for_job(lambda: self.job(kind, name, namespace), job_kind, name, namespace, timeout=timeout_seconds,
                         poll=poll_seconds, callback=stream_rank_zero)
        except JobFailed:
            return False
        except JobTimeout:
            raise SubmitError(f"{kind} {namespace}/{name} did not finish in {timeout_seconds:.0f} s") from None
        return True


def _message(e) -> str:
    try:
        return json.loads(e.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(e.body or "")[:200]


def in_order(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objects, key=lambda o: ORDER.index(o["kind"]) if o["kind"] in ORDER else len(ORDER))
