"""The training job kinds and the one waiter on them.

The evaluator (`--wait-for KIND/NAME`, and the gate that starts it) and r1v_submit (following the job
it created) read a training job the same way: its API coordinates, the conditions that end it and
its rank-0 pod come from JOB_KINDS, and `wait_for_job` polls it until one of those conditions is True
(the Kubeflow SDK's `TrainerClient.wait_for_job_status` is the model: poll, call back, return the job
or raise). The chart's `r1v.jobAPI` helper renders the same coordinates on the Helm side.

Standard library only: the kubernetes client is imported where a job is read (`read_job`,
`retry_while_unreadable`), so this module costs nothing where no job is waited on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobKind:
    kind: str
    group: str
    version: str
    plural: str
    succeeded: str  # the condition type that ends the job well
    failed: str  # ... and badly
    rank_zero: str  # label selector of the rank-0 pod; {name} is the job's name
    container: str  # the trainer's container in that pod

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


JOB_KINDS = {k.kind: k for k in (
    # training-operator v1: the operator's conditions and pod labels.
    JobKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "Succeeded", "Failed",
            "training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master", "pytorch"),
    # Kubeflow Trainer v2: the TrainJob's conditions; its pods are JobSet's.
    JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", "Failed",
            "jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0", "node"),
)}


def job_kind(kind: str) -> JobKind:
    """The kind by its name in any case: `pytorchjob` as --wait-for spells it, `PyTorchJob` as the chart."""
    for found in JOB_KINDS.values():
        if found.kind.lower() == kind.lower():
            return found
    raise KeyError(f"{kind}: not a training job kind ({', '.join(JOB_KINDS)})")


class JobFailed(Exception):
    def __init__(self, job: str, reason: str, message: str):
        super().__init__(f"training job {job} failed: {reason}: {message}")
        self.reason = reason


class JobTimeout(TimeoutError):
    pass


def true_conditions(job: dict) -> dict[str, dict]:
    """The job's conditions whose status is "True", by type."""
    return {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def read_job(api_client, kind: JobKind, name: str, namespace: str, request_timeout: float | None = None) -> dict:
    """The job as the API server has it (raises the kubernetes client's ApiException or urllib3's errors)."""
    from kubernetes import client

    options = {"_request_timeout": request_timeout} if request_timeout else {}
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(kind.group, kind.version, namespace,
                                                                            kind.plural, name, **options)


def retry_while_unreadable(error: Exception) -> str | None:
    """What to retry on: the job not existing yet (it is often created together with its waiter) and
    connection errors (an API server blip must not lose a day of waiting). Any other API answer
    (403: RBAC) will not fix itself: None, so the waiter raises it."""
    import urllib3
    from kubernetes.client.rest import ApiException

    if isinstance(error, ApiException) and error.status == 404:
        return "not found yet"
    if isinstance(error, urllib3.exceptions.HTTPError):  # connection refused, timeouts
        return f"not readable: {error}"
    return None


def wait_for_job(read: Callable[[], dict], kind: JobKind, name: str, namespace: str, *, timeout: float,
                 poll: float, retry: Callable[[Exception], str | None] | None = None,
                 callback: Callable[[dict], bool] | None = None) -> dict:
    """Polls `read()` (the job, as a dict) until its kind's success or failure condition is True:
    returns the job when it succeeded, raises JobFailed (the condition's reason and message) when it
    failed, and JobTimeout when `timeout` seconds would pass before the next poll.

    An error of `read` is retried when `retry(error)` names the problem (logged), else raised; without
    `retry` every error is raised. `callback(job)` runs after each read of a job still running
    (r1v_submit streams the rank-0 pod's log there); when it returns True it spent the time itself
    (a log streamed to its end) and the job is read again at once."""
    where = f"{kind.kind} {namespace}/{name}"
    deadline = time.monotonic() + timeout
    while True:
        problem, busy = None, False
        try:
            job = read()
        except Exception as error:
            problem = retry(error) if retry else None
            if problem is None:
                raise
        else:
            conditions = true_conditions(job)
            if kind.failed in conditions:
                failed = conditions[kind.failed]
                raise JobFailed(f"{namespace}/{name}", failed.get("reason") or "Failed", failed.get("message") or "")
            if kind.succeeded in conditions:
                return job
            busy = bool(callback and callback(job))
        if time.monotonic() + (0 if busy else poll) > deadline:
            raise JobTimeout(f"{where} did not finish within {timeout:.0f} s" + (f" ({problem})" if problem else ""))
        if problem:
            logger.warning("%s %s (retrying)", where, problem)
        if not busy:
            time.sleep(poll)
