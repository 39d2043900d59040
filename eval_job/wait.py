"""Waiting for training before evaluating.

- `pytorchjob/NAME`: polls the PyTorchJob through kubeflow-training's TrainingClient until it is
  Succeeded (returns) or Failed (raises TrainingFailed with the job's reason).
- `trainjob/NAME`: polls the Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) through
  the kubernetes client until its terminal condition, Complete or Failed (kubeflow-training 1.9
  has no v2 client). The kubernetes and kubeflow packages are imported here only, so marker mode
  and plain evaluation run without them.
- `marker`: polls for the trainer's completion marker, OUTPUT_DIR/training_complete.json, on the
  shared volume, and takes it only when the final model's files are the ones it records (sizes
  and sha256): a marker beside other weights is refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from eval_job.checkpoints import MARKER
from r1v_common.checkpoints import marker_problem, read_marker

log = logging.getLogger(__name__)


class WaitTimeout(Exception):
    pass


class WaitConfigError(Exception):
    """Waiting cannot even start (no kubeconfig, no kubeflow-training): one line, exit 2."""


class TrainingFailed(Exception):
    def __init__(self, job: str, reason: str, message: str):
        super().__init__(f"training job {job} failed: {reason}: {message}")
        self.reason = reason


JOB_KINDS = ("pytorchjob", "trainjob")


def parse_wait_for(spec: str) -> tuple[str, str | None]:
    """`pytorchjob/NAME` -> ("pytorchjob", NAME), `trainjob/NAME` -> ("trainjob", NAME); `marker` -> ("marker", None)."""
    if spec == "marker":
        return "marker", None
    kind, _, name = spec.partition("/")
    if kind.lower() in JOB_KINDS and name:
        return kind.lower(), name
    raise ValueError(f"--wait-for {spec!r}: expected pytorchjob/NAME, trainjob/NAME or marker")


def wait_for_job(kind: str, name: str, namespace: str | None, timeout: float, poll: float,
                 kubeconfig: str | None = None):
    """wait_for_pytorchjob or wait_for_trainjob, by the kind parse_wait_for returned."""
    wait = wait_for_trainjob if kind == "trainjob" else wait_for_pytorchjob
    return wait(name, namespace, timeout, poll, kubeconfig)


def wait_for_marker(directory: str | Path, timeout: float, poll: float) -> dict:
    """The contents of DIRECTORY/training_complete.json once it exists, parses and matches the
    final model's files."""
    path = Path(directory) / MARKER
    deadline = time.monotonic() + timeout
    log.info("waiting up to %.0f s for %s", timeout, path)
    refused = None
    while True:
        record = read_marker(directory, MARKER)  # None until a whole JSON object is there (the trainer may be mid-write)
        if record is not None:
            problem = marker_problem(directory, record)
            if problem is None:
                return record
            if problem != refused:  # said once per distinct mismatch, not every poll
                log.warning("refusing %s: %s; waiting for the trainer to write a marker that matches", path, problem)
                refused = problem
        if time.monotonic() >= deadline:
            why = f" that matches the final model (last seen: {refused})" if refused else ""
            raise WaitTimeout(f"no completion marker {path}{why} after {timeout:.0f} s")
        time.sleep(poll)


def _unreachable(kind: str, name: str, kubeconfig: str | None, error: Exception) -> WaitConfigError:
    where = f"--kubeconfig {kubeconfig}" if kubeconfig else "no in-cluster service account and no kubeconfig"
    return WaitConfigError(f"--wait-for {kind}/{name}: cannot reach the Kubernetes API ({where}: "
                           f"{' '.join(str(error).split())}); run in a pod, or pass --kubeconfig FILE, "
                           "or use --wait-for marker")


def kube_api_client(kind: str, name: str, kubeconfig: str | None = None):
    """A kubernetes ApiClient from `kubeconfig` when given, else the in-cluster service account in a
    pod, else $KUBECONFIG or ~/.kube/config; WaitConfigError naming the way out when none works."""
    try:
        from kubeflow.training.utils.utils import is_running_in_k8s
        from kubernetes import client, config
        from kubernetes.config import ConfigException
    except ImportError as e:
        raise WaitConfigError(f"--wait-for {kind} needs the kubernetes client (pip install 'r1v-k8s[k8s]'): {e}") from e
    try:
        if kubeconfig or not is_running_in_k8s():
            return config.new_client_from_config(config_file=kubeconfig)
        config.load_incluster_config()
        return client.ApiClient()
    except (ConfigException, OSError) as e:
        raise _unreachable(kind, name, kubeconfig, e) from e


def wait_for_pytorchjob(name: str, namespace: str | None, timeout: float, poll: float,
                        kubeconfig: str | None = None):
    """Block until PyTorchJob NAME has Succeeded; raise TrainingFailed if it Failed. Uses `kubeconfig`
    when given, else the in-cluster service account in a pod, else $KUBECONFIG or ~/.kube/config."""
    try:
        from kubeflow.training import TrainingClient
        from kubeflow.training.constants import constants
        from kubernetes.config import ConfigException
    except ImportError as e:
        raise WaitConfigError(f"--wait-for pytorchjob needs kubeflow-training (pip install 'r1v-k8s[k8s]'): {e}") from e

    options = {"namespace": namespace} if namespace else {}
    try:
        client = TrainingClient(config_file=kubeconfig, **options)
    except (ConfigException, OSError) as e:
        raise _unreachable("pytorchjob", name, kubeconfig, e) from e
    namespace = client.namespace
    done = {constants.JOB_CONDITION_SUCCEEDED, constants.JOB_CONDITION_FAILED}
    deadline = time.monotonic() + timeout
    log.info("waiting up to %.0f s for PyTorchJob %s/%s", timeout, namespace, name)
    while True:
        remaining = deadline - time.monotonic()
        try:
            # Waiting for Failed too lets us read the job's own reason instead of the client's
            # generic "is Failed" error.
            job = client.wait_for_job_conditions(name, namespace, expected_conditions=done,
                                                 wait_timeout=max(remaining, 0), polling_interval=poll)
            break
        except TimeoutError as e:
            # Raised both when the client's own wait runs out and when one API request hangs; only
            # our deadline decides.
            if time.monotonic() + poll > deadline:
                raise WaitTimeout(f"PyTorchJob {namespace}/{name} did not finish within {timeout:.0f} s") from e
            log.warning("PyTorchJob %s/%s: %s (retrying)", namespace, name, e)
        except RuntimeError as e:
            # Retried: the job not existing yet (the evaluator is often created together with it)
            # and connection errors (an API server blip must not lose a day of waiting). Any other
            # API answer (403: RBAC) will not fix itself, so it fails now.
            status = getattr(e.__cause__, "status", None)
            if status is not None and status != 404:
                raise
            if time.monotonic() + poll > deadline:
                raise WaitTimeout(f"PyTorchJob {namespace}/{name} not readable within {timeout:.0f} s: {e}") from e
            log.warning("PyTorchJob %s/%s not readable yet (retrying): %s", namespace, name, str(e).splitlines()[0])
            time.sleep(poll)
    for condition in client.get_job_conditions(job=job):
        if condition.type == constants.JOB_CONDITION_FAILED and condition.status == "True":
            raise TrainingFailed(f"{namespace}/{name}", condition.reason or "Failed", condition.message or "")
    log.info("PyTorchJob %s/%s succeeded", namespace, name)
    return job


TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")


def wait_for_trainjob(name: str, namespace: str | None, timeout: float, poll: float,
                      kubeconfig: str | None = None) -> dict:
    """Block until TrainJob NAME is Complete; raise TrainingFailed if it Failed. Connects as
    wait_for_pytorchjob does; retries what it retries (not found yet, API unreachable) and fails at
    once on any other refusal (403: RBAC) with a RuntimeError."""
    try:
        import urllib3
        from kubeflow.training.utils.utils import get_default_target_namespace
        from kubernetes import client
        from kubernetes.client.rest import ApiException
    except ImportError as e:
        raise WaitConfigError(f"--wait-for trainjob needs the kubernetes client (pip install 'r1v-k8s[k8s]'): {e}") from e

    api_client = kube_api_client("trainjob", name, kubeconfig)
    namespace = namespace or get_default_target_namespace()
    api = client.CustomObjectsApi(api_client)
    where = f"TrainJob {namespace}/{name}"
    deadline = time.monotonic() + timeout
    log.info("waiting up to %.0f s for %s", timeout, where)
    while True:
        try:
            job = api.get_namespaced_custom_object(*TRAINJOB_API[:2], namespace, TRAINJOB_API[2], name,
                                                   _request_timeout=max(poll, 5.0))
            status = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"}
            if "Failed" in status:
                raise TrainingFailed(f"{namespace}/{name}", status["Failed"].get("reason") or "Failed",
                                     status["Failed"].get("message") or "")
            if "Complete" in status:
                log.info("%s completed", where)
                return job
            problem = None
        except ApiException as e:
            if e.status != 404:
                raise RuntimeError(f"Failed to get TrainJob: {namespace}/{name}. Error: ({e.status}) {e.reason}") from e
            problem = "not found yet"
        except urllib3.exceptions.HTTPError as e:  # connection refused, timeouts: an API server blip
            problem = f"not readable: {e}"
        if time.monotonic() + poll > deadline:
            raise WaitTimeout(f"{where} did not finish within {timeout:.0f} s"
                              + (f" ({problem})" if problem else ""))
        if problem:
            log.warning("%s %s (retrying)", where, problem)
        time.sleep(poll)
