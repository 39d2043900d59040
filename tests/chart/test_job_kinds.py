"""The chart and the Python side name each training job kind the same way: what the chart renders
(the job's apiVersion, the gate's Role, the helm test's JOB_API, the trainer's container, the
metrics Service's rank-0 selector) is r1v_common.jobs' table, which the evaluator's waiter and
r1v_submit read."""

from __future__ import annotations

import pytest

from r1v_common.jobs import JOB_KINDS
from tests.chart.render import only, render


def _container_names(obj) -> set[str]:
    """Every container name anywhere in `obj` (a pod template may sit deep in a job or runtime)."""
    if isinstance(obj, list):
        return set().union(*map(_container_names, obj)) if obj else set()
    if not isinstance(obj, dict):
        return set()
    names = {c.get("name") for c in obj.get("containers") or [] if isinstance(c, dict)}
    return names.union(*map(_container_names, obj.values()))


def _labels(selector: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in selector.split(","))


@pytest.mark.parametrize("kind", sorted(JOB_KINDS))
def test_the_chart_renders_each_job_kind_with_the_tables_coordinates(kind):
    table = JOB_KINDS[kind]
    objects = render({"jobKind": kind})
    job = only(objects, kind)
    assert job["apiVersion"] == table.api_version
    rule = only(objects, "Role")["rules"][0]
    assert rule["apiGroups"] == [table.group] and rule["resources"] == [table.plural]
    env = {e["name"]: e.get("value") for e in only(objects, "Pod")["spec"]["containers"][0]["env"]}
    assert env["JOB_API"] == f"{table.api_version}/{table.plural}"
    trainer = job if kind == "PyTorchJob" else only(objects, "TrainingRuntime")
    assert table.container in _container_names(trainer)
    selector = only(objects, "Service", "-metrics")["spec"]["selector"]
    assert _labels(table.rank_zero.format(name=job["metadata"]["name"])).items() <= selector.items()


def test_the_coordinates_check_can_fail():
    # The other kind's table row does not describe a rendered PyTorchJob.
    objects = render({"jobKind": "PyTorchJob"})
    other = JOB_KINDS["TrainJob"]
    assert only(objects, "PyTorchJob")["apiVersion"] != other.api_version
    assert other.container not in _container_names(only(objects, "PyTorchJob"))
