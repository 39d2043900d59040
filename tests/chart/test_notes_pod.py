"""The pod NOTES.txt tells users to run (`kubectl run ... --overrides`) is admitted where the chart's
own pods are: it meets Pod Security "restricted" and carries every request and limit that
k8s/namespace.yaml's ResourceQuota demands, within it."""

from __future__ import annotations

import json
import shlex

import yaml

from tests.chart.render import REPO, notes

SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_problems(spec: dict) -> list[str]:
    """Pod Security Standards "restricted" (v1.x) checks that apply to a pod spec, each failure named."""
    problems = [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    pod_sc = spec.get("securityContext") or {}
    problems += [f"volume {v['name']}: hostPath" for v in spec.get("volumes", []) if "hostPath" in v]
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        if (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") not in SECCOMP:
            problems.append(f"{name}: no RuntimeDefault or Localhost seccompProfile")
    return problems


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
    for unit, factor in units.items():
        if str(value).endswith(unit):
            return float(str(value)[:-len(unit)]) * factor
    return float(value)


def quota_problems(spec: dict) -> list[str]:
    """What the namespace's ResourceQuota refuses: a compute resource it bounds that a container
    does not set, or a pod total above the quota."""
    quota = next(d for d in yaml.safe_load_all((REPO / "k8s" / "namespace.yaml").read_text())
                 if d and d["kind"] == "ResourceQuota")["spec"]["hard"]
    problems = []
    for key, hard in quota.items():
        part, _, resource = key.partition(".")
        if part not in ("requests", "limits") or resource not in ("cpu", "memory"):
            continue
        values = [c.get("resources", {}).get(part, {}).get(resource) for c in spec["containers"]]
        if None in values:
            problems.append(f"{key} not set")
        elif sum(map(_quantity, values)) > _quantity(hard):
            problems.append(f"{key} above {hard}")
    return problems


def results_pod(values: dict | None = None) -> dict:
    line = next(row.strip() for row in notes(values).splitlines() if " run " in row and "--overrides=" in row)
    return json.loads(shlex.split(line)[-1].split("=", 1)[1])["spec"]


def test_the_notes_results_pod_meets_restricted_and_the_namespace_quota():
    spec = results_pod()
    assert restricted_problems(spec) == []
    assert quota_problems(spec) == []
    assert spec["automountServiceAccountToken"] is False
    assert spec["containers"][0]["volumeMounts"][0]["readOnly"] is True


def test_the_pod_checks_can_fail():
    # The command NOTES gave before: runAsNonRoot only, no resources.
    old = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
           "containers": [{"name": "results", "command": ["cat", "scores.json"]}]}
    assert restricted_problems(old) == ["results: allowPrivilegeEscalation is not false",
                                        "results: capabilities.drop lacks ALL",
                                        "results: no RuntimeDefault or Localhost seccompProfile"]
    assert quota_problems(old) == ["requests.cpu not set", "requests.memory not set", "limits.memory not set"]
    old["containers"][0]["resources"] = {"requests": {"cpu": "600", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    assert quota_problems(old) == ["requests.cpu above 512"]
