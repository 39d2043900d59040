"""The evaluator's Prometheus metrics, pushed to a Pushgateway (job "r1v-eval", grouping key
{namespace, run, checkpoint}); documented in docs/metrics.md ("Evaluator").

`namespace` is the Kubernetes namespace of the run, so two releases with the same run name in two
namespaces push to two groups instead of overwriting each other's scores.

Every value is a gauge: a push is a snapshot of one finished evaluation, and the Pushgateway keeps
the last push of each group. A push replaces its whole group (HTTP PUT), so a successful evaluation
of a run's final model also clears an earlier failure pushed for it.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

logger = logging.getLogger(__name__)

JOB = "r1v-eval"
# Where a pod finds its own namespace when the chart's downward-API POD_NAMESPACE is not set.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"
SCORE_LABELS = ("benchmark", "prompt")

# name -> (help, labels)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "r1v_eval_accuracy_ratio": ("Share of questions answered correctly (0..1), R1-V's strict "
                                "<answer>N</answer> rule; unparseable answers count as wrong.", SCORE_LABELS),
    "r1v_eval_questions_evaluated": ("Questions scored.", SCORE_LABELS),
    "r1v_eval_questions_skipped": ("Rows of the question file skipped as unusable (bad JSON, "
                                   "non-integer ground truth, missing or unreadable image).", SCORE_LABELS),
    "r1v_eval_parse_failures": ("Model outputs with no parseable <answer>N</answer>.", SCORE_LABELS),
    "r1v_eval_duration_seconds": ("Wall time to generate and score all questions (model loading excluded).",
                                  SCORE_LABELS),
    "r1v_eval_samples_per_second": ("Questions scored per second.", SCORE_LABELS),
    "r1v_eval_checkpoint_step": ("Training step of the scored checkpoint (the final model: its last step; "
                                 "a base model: 0).", ()),
    "r1v_eval_last_success_timestamp_seconds": ("Unix time the pushed evaluation finished.", ()),
    "r1v_eval_training_failed": ("1 when the awaited training job failed; `reason` is the job's.", ("reason",)),
    "r1v_eval_last_failure_timestamp_seconds": ("Unix time the training failure was seen.", ()),
}
SCORE_FAMILIES = [name for name in FAMILIES if name not in
                  ("r1v_eval_training_failed", "r1v_eval_last_failure_timestamp_seconds")]
FAILURE_FAMILIES = ["r1v_eval_training_failed", "r1v_eval_last_failure_timestamp_seconds"]


def _register(registry: CollectorRegistry, names: Iterable[str]) -> dict[str, Gauge]:
    return {name: Gauge(name, FAMILIES[name][0], FAMILIES[name][1], registry=registry) for name in names}


def new_registry() -> CollectorRegistry:
    """A registry with every r1v_eval_* family registered (for dashboards and docs to enumerate)."""
    registry = CollectorRegistry()
    _register(registry, FAMILIES)
    return registry


def scores_registry(summaries: list[dict], step: int) -> CollectorRegistry:
    """One checkpoint's scores: a series per (benchmark, prompt) summary."""
    registry = CollectorRegistry()
    g = _register(registry, SCORE_FAMILIES)
    for s in summaries:
        labels = (s["benchmark"], s["prompt"])
        g["r1v_eval_accuracy_ratio"].labels(*labels).set(s["accuracy"])
        g["r1v_eval_questions_evaluated"].labels(*labels).set(s["evaluated"])
        g["r1v_eval_questions_skipped"].labels(*labels).set(s["skipped"])
        g["r1v_eval_parse_failures"].labels(*labels).set(s["parse_failures"])
        g["r1v_eval_duration_seconds"].labels(*labels).set(s["duration_seconds"])
        g["r1v_eval_samples_per_second"].labels(*labels).set(s["samples_per_second"])
    g["r1v_eval_checkpoint_step"].set(step)
    g["r1v_eval_last_success_timestamp_seconds"].set(max(s["finished_at_unix"] for s in summaries))
    return registry


def failure_registry(reason: str, when: float | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    g = _register(registry, FAILURE_FAMILIES)
    g["r1v_eval_training_failed"].labels(reason).set(1)
    g["r1v_eval_last_failure_timestamp_seconds"].set(time.time() if when is None else when)
    return registry


def pod_namespace(explicit: str | None = None, service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The run's namespace: `explicit` (--namespace), else $POD_NAMESPACE (the chart sets it through the
    downward API), else the mounted service account's namespace, else "default" (Kubernetes' own
    default namespace: a run outside a cluster)."""
    if explicit:
        return explicit
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return service_account_file.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def grouping_key(namespace: str, run: str, checkpoint: str) -> dict[str, str]:
    return {"namespace": namespace, "run": run, "checkpoint": checkpoint}


class PushError(Exception):
    pass


def _permanent(error: OSError) -> bool:
    """A 4xx answer other than 429 (Too Many Requests) will be the same on every retry: e.g. 400 for
    metrics inconsistent with what the gateway holds, 401/403 from a proxy in front of it."""
    return isinstance(error, urllib.error.HTTPError) and 400 <= error.code < 500 and error.code != 429


def push(gateway: str, registry: CollectorRegistry, grouping_key: dict[str, str], *, attempts: int = 5,
         backoff: float = 2.0, timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """PUT `registry` to the group; retries connection errors, timeouts, 5xx and 429 with exponential
    backoff (backoff, 2*backoff, ...), then raises PushError naming the gateway, the group and the last
    error. Other 4xx answers raise at once."""
    for attempt in range(1, attempts + 1):
        try:
            push_to_gateway(gateway, job=JOB, registry=registry, grouping_key=grouping_key, timeout=timeout)
            logger.info("pushed %s to %s", grouping_key, gateway)
            return
        except OSError as e:  # connection refused, timeouts and HTTP errors (URLError is an OSError)
            last = e
            if _permanent(e):
                raise PushError(f"the Pushgateway at {gateway} refused {grouping_key} (not retried): {e}") from e
            if attempt < attempts:
                delay = backoff * 2 ** (attempt - 1)
                logger.warning("push to %s failed (attempt %d/%d, retrying in %.1f s): %s",
                            gateway, attempt, attempts, delay, e)
                sleep(delay)
    raise PushError(f"could not push {grouping_key} to the Pushgateway at {gateway} "
                    f"after {attempts} attempts: {last}")
