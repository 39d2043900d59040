"""Waiting for training before evaluating.

- `pytorchjob/NAME`, `trainjob/NAME`: polls the training job (a training-operator PyTorchJob or a
  Kubeflow Trainer v2 TrainJob) through the kubernetes client with r1v_common.jobs' one waiter, until
  its success condition (returns) or its failure condition (raises JobFailed with the job's reason).
  The job not existing yet and API server blips are retried; any other refusal (403: RBAC) fails at
  once with a RuntimeError. The kubernetes and kubeflow packages are imported here only, so marker
  mode and plain evaluation run without them.
- `marker`: polls for the trainer's completion marker, OUTPUT_DIR/training_complete.json, on the
  shared volume, and takes it only when the final model's files are the ones it records (sizes
  and sha256): a marker beside other weights is refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from eval_job.checkpoints import COMPLETION_MARKER
from r1v_common import jobs
from r1v_common.checkpoints import marker_problem, read_marker

logger = logging.getLogger(__name__)


class WaitTimeout(Exception):
    pass


class WaitConfigError(Exception):
    """Waiting cannot even start (no kubeconfig, no kubeflow-training): one line, exit 2."""


# --wait-for spells the kinds in lower case.
WAIT_KINDS = tuple(kind.lower() for kind in jobs.JOB_KINDS)


def parse_wait_for(spec: str) -> tuple[str, str | None]:
    """`pytorchjob/NAME` -> ("pytorchjob", NAME), `trainjob/NAME` -> ("trainjob", NAME);
    `marker` -> ("marker", None)."""
    if spec == "marker":
        return "marker", None
    kind, _, name = spec.partition("/")
    if kind.lower() in WAIT_KINDS and name:
        return kind.lower(), name
    raise ValueError(f"--wait-for {spec!r}: expected pytorchjob/NAME, trainjob/NAME or marker")


def wait_for_marker(directory: str | Path, timeout: float, poll: float) -> dict:
    """The contents of DIRECTORY/training_complete.json once it exists, parses and matches the
    final model's files."""
    path = Path(directory) / COMPLETION_MARKER
    deadline = time.monotonic() + timeout
    logger.info("waiting up to %.0f s for %s", timeout, path)
    refused = None
    while True:
        # None until a whole JSON object is there (the trainer may be mid-write)
        record = read_marker(directory, COMPLETION_MARKER)
        if record is not None:
            problem = marker_problem(directory, record)
            if problem is None:
                return record
            if problem != refused:  # said once per distinct mismatch, not every poll
                logger.warning("refusing %s: %s; waiting for the trainer to write a marker that matches", path, problem)
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


# How each kind's success reads in the log.
_SUCCEEDED = {"Succeeded": "succeeded", "Complete": "completed"}


def wait_for_job(kind: str, name: str, namespace: str | None, timeout: float, poll: float,
                 kubeconfig: str | None = None) -> dict:
    """Block until training job KIND/NAME (a kind parse_wait_for returned) succeeded; raise JobFailed
    if it failed. Uses `kubeconfig` when given, else the in-cluster service account in a pod, else
    $KUBECONFIG or ~/.kube/config."""
    try:
        from kubeflow.training.utils.utils import get_default_target_namespace
        from kubernetes.client.rest import ApiException
    except ImportError as e:
        raise WaitConfigError(f"--wait-for {kind} needs the kubernetes client (pip install 'r1v-k8s[k8s]'): {e}") from e

    job_kind = jobs.job_kind(kind)
    api_client = kube_api_client(kind, name, kubeconfig)
    namespace = namespace or get_default_target_namespace()
    where = f"{job_kind.kind} {namespace}/{name}"
    logger.info("waiting up to %.0f s for %s", timeout, where)
    try:
        job = jobs.wait_for_job(lambda: jobs.read_job(api_client, job_kind, name, namespace, max(poll, 5.0)),
                                job_kind, name, namespace, timeout=timeout, poll=poll,
                                retry=jobs.retry_while_unreadable)
    except ApiException as e:
        raise RuntimeError(f"Failed to get {job_kind.kind}: {namespace}/{name}. Error: ({e.status}) {e.reason}") from e
    except jobs.JobTimeout as e:
        raise WaitTimeout(str(e)) from e
    logger.info("%s %s", where, _SUCCEEDED[job_kind.succeeded])
    return job
