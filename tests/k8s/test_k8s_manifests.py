"""k8s/: what a cluster needs before the chart. Manifests validate, the pins and the wiring between
them and the chart agree (Pushgateway URL, monitor labels, dashboard label, GPU quota)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
from tests.chart.r1v_chart_helpers import CHART, crd_problems, kubernetes_validate_problems, only, render

MANIFESTS = [K8S / "namespace.yaml", K8S / "storage" / "nfs-storageclass.yaml", K8S / "storage" / "pvc.yaml",
             K8S / "monitoring" / "pushgateway.yaml"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kps() -> dict:
    return yaml.safe_load((K8S / "monitoring" / "kube-prometheus-stack-values.yaml").read_text())


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_strictly(path):
    assert kubernetes_validate_problems(_docs(path)) == []


def test_training_operator_is_pinned_to_the_release_the_crd_comes_from():
    kustomization = yaml.safe_load((K8S / "training-operator" / "kustomization.yaml").read_text())
    (resource,) = kustomization["resources"]
    repo, ref = resource.split("?ref=")
    assert repo == "github.com/kubeflow/training-operator.git/manifests/overlays/standalone"
    assert ref.startswith("v1.9.")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["r1v.dev/training-operator"] == ref


def test_pushgateway_is_scraped_with_honor_labels_and_matches_the_chart_url():
    deployment, service = _docs(K8S / "monitoring" / "pushgateway.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (monitor,) = [m for m in _kps()["prometheus"]["additionalServiceMonitors"] if "pushgateway" in m["name"]]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The same entry as a ServiceMonitor passes the CRD (kube-prometheus-stack renders it that way).
    as_object = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                 "metadata": {"name": monitor["name"], "labels": monitor["additionalLabels"]},
                 "spec": {k: monitor[k] for k in ("selector", "namespaceSelector", "endpoints")}}
    assert crd_problems(as_object) == []
    namespace = monitor["namespaceSelector"]["matchNames"][0]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    url = only(render({}), "Job", "-eval")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"http://{service['metadata']['name']}.{namespace}.svc:{port}" in url


def test_prometheus_and_grafana_select_what_the_chart_labels():
    kps = _kps()
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    dashboard = only(render({}), "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
    assert sidecar["searchNamespace"] == "ALL"
    monitor = only(render({}), "ServiceMonitor")
    # With *SelectorNilUsesHelmValues true the stack selects release=<its release name>.
    assert kps["prometheus"]["prometheusSpec"]["serviceMonitorSelectorNilUsesHelmValues"] is True
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert kps["prometheus"]["prometheusSpec"]["serviceMonitorNamespaceSelector"] == {}


def test_quota_fits_a_default_run_and_storage_is_read_write_many():
    quota = next(d for d in _docs(K8S / "namespace.yaml") if d["kind"] == "ResourceQuota")
    gpus = int(quota["spec"]["hard"]["requests.nvidia.com/gpu"])
    assert gpus >= 8 + 1  # one node's trainer plus the evaluator
    pvc = _docs(K8S / "storage" / "pvc.yaml")[0]
    storage_class = _docs(K8S / "storage" / "nfs-storageclass.yaml")[0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert pvc["metadata"]["namespace"] == quota["metadata"]["namespace"]
