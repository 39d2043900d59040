"""k8s/: what a cluster needs before the chart. Manifests validate, the pins and the wiring between
them and the chart agree (Pushgateway URL, monitor labels, dashboard label, GPU quota)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.render import CHART, kubernetes_validate_problems, only, render

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"

MANIFESTS = [K8S / "namespace.yaml", K8S / "storage" / "nfs-storageclass.yaml", K8S / "storage" / "pvc.yaml"]


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


def test_trainer_is_pinned_to_the_release_the_crds_come_from():
    for path in (K8S / "trainer" / "kustomization.yaml", K8S / "trainer" / "runtimes" / "kustomization.yaml"):
        (resource,) = yaml.safe_load(path.read_text())["resources"]
        repo, ref = resource.split("?ref=")
        assert repo.startswith("github.com/kubeflow/trainer.git/manifests/overlays/") and ref == "v2.3.0"
    # The CRD fixture the chart's TrainJob is validated against comes from the same tag.
    from tests.outside import FIXTURES

    assert "/v2.3.0/" in FIXTURES["trainjobs-crd"].url
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["r1v.dev/kubeflow-trainer"] == "v2.3.0"


def _pushgateway() -> dict:
    return yaml.safe_load((K8S / "monitoring" / "pushgateway-values.yaml").read_text())


def test_pushgateway_is_scraped_with_honor_labels_and_matches_the_chart_url():
    values = _pushgateway()
    monitor = values["serviceMonitor"]
    # The upstream chart's ServiceMonitor, selected by kube-prometheus-stack like the r1v chart's.
    assert monitor["enabled"] is True and monitor["honorLabels"] is True
    assert monitor["additionalLabels"]["release"] == only(render({}), "ServiceMonitor")["metadata"]["labels"]["release"]
    # Release prometheus-pushgateway in monitoring: the upstream chart names its Service after the
    # release, so the URL is the r1v chart's default.
    install = next(line for line in (K8S / "monitoring" / "pushgateway-values.yaml").read_text().splitlines()
                   if "helm install" in line)
    release, chart = install.split("helm install", 1)[1].split()[:2]
    assert (release, chart) == ("prometheus-pushgateway", "prometheus-community/prometheus-pushgateway")
    args = only(render({}), "Job", "-eval")["spec"]["template"]["spec"]["containers"][0]["args"]
    url = args[args.index("--pushgateway") + 1]
    assert url == f"http://{release}.{monitor['namespace']}.svc:{values['service']['port']}"
    # Pushed scores survive a restart of the gateway.
    assert values["persistentVolume"]["enabled"] is True
    mount = values["persistentVolume"]["mountPath"]
    assert any(a.startswith(f"--persistence.file={mount}/") for a in values["extraArgs"])


def test_prometheus_and_grafana_select_what_the_chart_labels():
    kps = _kps()
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    dashboard = only(render({"monitoring": {"dashboard": {"enabled": True}}}), "ConfigMap", "-dashboard")
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
