"""The chart's extension points, named as cert-manager and kube-prometheus-stack name them: each
renders where those charts put it, for every component and both job kinds, and a misspelling is
rejected by the closed schema naming the key. Also: POD_NAMESPACE in every pod, --set lists of
numbers as arguments, monitors only where their API exists."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart.render import kinds, notes, only, render, replica_pods, validation_problems

ENV = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
ENV_FROM = {"secretRef": {"name": "s3-credentials"}}
VOLUME = {"name": "ib", "hostPath": {"path": "/dev/infiniband"}}
MOUNT = {"name": "ib", "mountPath": "/dev/infiniband"}
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}


def trainer_pods(objects) -> list[tuple[dict, dict]]:
    """(pod spec, trainer container) of every training pod template, either kind."""
    if "PyTorchJob" in kinds(objects):
        return [(pod, pod["containers"][0]) for pod in replica_pods(only(objects, "PyTorchJob")).values()]
    (rjob,) = only(objects, "TrainingRuntime")["spec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    return [(pod, pod["containers"][0])]


def trainer_env(objects) -> list[dict]:
    if "PyTorchJob" in kinds(objects):
        return trainer_pods(objects)[0][1]["env"]
    return only(objects, "TrainJob")["spec"]["trainer"]["env"]


def component_pod(objects, component: str) -> dict:
    """The pod template of the evaluator or data-prep Job (metadata and spec)."""
    return only(objects, "Job", "-eval" if component == "evaluator" else "-data-prep")["spec"]["template"]


def with_data_prep(values: dict) -> dict:
    return {**values, "dataPrep": {**values.get("dataPrep", {}), "enabled": True}}


KINDS = pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])


@KINDS
def test_trainer_env_envfrom_volumes_and_mounts(kind):
    objects = render({"jobKind": kind, "nodes": 2, "trainer": {
        "extraEnv": [ENV], "extraEnvFrom": [ENV_FROM], "extraVolumes": [VOLUME], "extraVolumeMounts": [MOUNT]}})
    assert ENV in trainer_env(objects)
    for pod, c in trainer_pods(objects):
        assert c["envFrom"] == [ENV_FROM]
        assert VOLUME in pod["volumes"] and MOUNT in c["volumeMounts"]
        # The chart's own mounts stay.
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/data", "/etc/r1v", "/dev/shm", "/dev/infiniband"}
    assert validation_problems(objects) == []


@KINDS
def test_trainer_scheduling_network_and_runtime_class(kind):
    objects = render({"jobKind": kind, "nodes": 2, "trainer": {
        "runtimeClassName": "nvidia", "topologySpreadConstraints": [SPREAD], "hostNetwork": True}})
    for pod, _ in trainer_pods(objects):
        assert pod["runtimeClassName"] == "nvidia" and pod["topologySpreadConstraints"] == [SPREAD]
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert validation_problems(objects) == []
    for pod, _ in trainer_pods(render({"jobKind": kind})):
        assert not {"runtimeClassName", "topologySpreadConstraints", "hostNetwork", "dnsPolicy"} & set(pod)


@KINDS
def test_trainer_service_account_created_or_existing(kind):
    objects = render({"jobKind": kind, "trainer": {"serviceAccount": {
        "create": True, "annotations": {"iam.gke.io/gcp-service-account": "r1v@p.iam.gserviceaccount.com"},
        "automountServiceAccountToken": True}}})
    sa = only(objects, "ServiceAccount", "-trainer")
    assert sa["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "r1v@p.iam.gserviceaccount.com"}
    for pod, _ in trainer_pods(objects):
        assert pod["serviceAccountName"] == sa["metadata"]["name"] == "r1v-trainer"
        assert pod["automountServiceAccountToken"] is True
    objects = render({"jobKind": kind, "trainer": {"serviceAccount": {"name": "platform-trainer"}}})
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"] == ["r1v-eval"]
    assert all(pod["serviceAccountName"] == "platform-trainer" for pod, _ in trainer_pods(objects))
    assert all("serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
               for pod, _ in trainer_pods(render({"jobKind": kind})))


@pytest.mark.parametrize("component", ["trainer", "evaluator", "dataPrep"])
def test_component_security_contexts_merge_over_the_top_level_ones(component):
    objects = render(with_data_prep({component: {
        "podSecurityContext": {"runAsUser": 2000, "supplementalGroups": [44]},
        "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"add": ["IPC_LOCK"], "drop": ["ALL"]}}}}))
    if component == "trainer":
        pod, c = trainer_pods(objects)[0]
    else:
        pod = component_pod(objects, component)["spec"]
        c = pod["containers"][0]
    psc, sc = pod["securityContext"], c["securityContext"]
    assert psc["runAsUser"] == 2000 and psc["supplementalGroups"] == [44]
    assert psc["runAsNonRoot"] is True and psc["fsGroup"] == 1000  # the rest of the top level stays
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["add"] == ["IPC_LOCK"]
    assert sc["allowPrivilegeEscalation"] is False
    others = [p for p in ("trainer", "evaluator", "dataPrep") if p != component]
    for other in others:
        spec = trainer_pods(objects)[0][0] if other == "trainer" else component_pod(objects, other)["spec"]
        assert spec["securityContext"]["runAsUser"] == 1000


@pytest.mark.parametrize("component", ["evaluator", "dataPrep"])
def test_evaluator_and_data_prep_labels_annotations_env_and_volumes(component):
    objects = render(with_data_prep({component: {
        "podLabels": {"team": "ml"}, "podAnnotations": {"sidecar.istio.io/inject": "false"},
        "extraEnv": [ENV], "extraEnvFrom": [ENV_FROM], "extraVolumes": [VOLUME], "extraVolumeMounts": [MOUNT]}}))
    template = component_pod(objects, component)
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "r1v"  # the chart's stay
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    c = template["spec"]["containers"][0]
    assert ENV in c["env"] and c["envFrom"] == [ENV_FROM]
    assert VOLUME in template["spec"]["volumes"] and MOUNT in c["volumeMounts"]
    assert validation_problems(objects) == []


@pytest.mark.parametrize("values, key", [
    ({"trainer": {"extraEnv": [{"name": "A", "valueFrm": {}}]}}, "valueFrm"),
    ({"trainer": {"extraEnv": [{"value": "x"}]}}, "name"),
    ({"trainer": {"extraEnv": {"A": "1"}}}, "/trainer/extraEnv"),  # a map where EnvVar objects belong
    ({"trainer": {"extraEnvFrom": [{"secretReff": {"name": "s"}}]}}, "secretReff"),
    ({"trainer": {"extraVolumeMounts": [{"name": "ib", "mountpath": "/x"}]}}, "mountpath"),
    ({"trainer": {"extraVolumes": [{"name": "data", "emptyDir": {}}]}}, "/trainer/extraVolumes/0/name"),
    ({"trainer": {"topologySpreadConstraints": [{**SPREAD, "maxskew": 1}]}}, "maxskew"),
    ({"trainer": {"serviceAccount": {"creat": True}}}, "creat"),
    ({"trainer": {"hostNetwork": "yes"}}, "/trainer/hostNetwork"),
    ({"trainer": {"restartPolicy": "Always"}}, "/trainer/restartPolicy"),
    ({"trainer": {"securityContext": {"privilegd": True}}}, "privilegd"),
    ({"evaluator": {"podLabel": {"a": "b"}}}, "podLabel"),
    ({"dataPrep": {"extraVolumeMount": []}}, "extraVolumeMount"),
    ({"jobKind": "TrainJobs"}, "/jobKind"),
    ({"trainJob": {"clusterRuntime": "x"}}, "clusterRuntime"),
    ({"kueue": {"queue": "q"}}, "queue"),
    ({"kueue": {"queueName": "Bad_Queue"}}, "/kueue/queueName"),
    ({"monitoring": {"forceMonitoringApi": True}}, "forceMonitoringApi"),
])
def test_misspelt_extension_points_are_rejected_naming_the_key(values, key):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert key in str(err.value)


@KINDS
def test_every_pod_has_its_namespace_from_the_downward_api(kind):
    objects = render({"jobKind": kind, "dataPrep": {"enabled": True}}, namespace="team-a")
    want = {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    envs = {"trainer": trainer_env(objects),
            "evaluator": component_pod(objects, "evaluator")["spec"]["containers"][0]["env"],
            "data-prep": component_pod(objects, "dataPrep")["spec"]["containers"][0]["env"],
            "helm-test": only(objects, "Pod")["spec"]["containers"][0]["env"]}
    assert {name: want in env for name, env in envs.items()} == dict.fromkeys(envs, True)


def test_set_list_with_numbers_reaches_the_trainer_as_strings():
    values = helm.parse_set_string("trainer.extraArgs={--max_steps,200,--beta,0.04,--bf16,true}")
    assert values["trainer"]["extraArgs"][1] == 200  # what Helm's --set hands the chart
    values = {**values, "evaluator": helm.parse_set_string("evaluator.extraArgs={--timeout,259200}")["evaluator"]}
    objects = render(values)
    args = trainer_pods(objects)[0][1]["args"]
    assert args[-6:] == ["--max_steps", "200", "--beta", "0.04", "--bf16", "true"]
    eval_args = only(objects, "Job", "-eval")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert eval_args[-2:] == ["--timeout", "259200"]


def test_monitors_render_only_where_the_cluster_serves_their_api():
    def monitors(objects):
        return [o["kind"] for o in objects if o["apiVersion"].startswith("monitoring.coreos.com")]
    # A cluster without prometheus-operator: no monitor (it would fail the install), NOTES say why.
    assert monitors(render({}, api_versions=[])) == []
    assert "does not serve monitoring.coreos.com/v1" in notes({}, api_versions=[])
    # The monitor and the alerts come together.
    assert (sorted(monitors(render({}, api_versions=["monitoring.coreos.com/v1"])))
            == ["PrometheusRule", "ServiceMonitor"])
    # Offline rendering (helm template, GitOps): the explicit override.
    assert sorted(monitors(render({"monitoring": {"forceMonitoringAPI": True}}, api_versions=[]))) == [
        "PrometheusRule", "ServiceMonitor"]
    assert monitors(render({"monitoring": {"enabled": False, "forceMonitoringAPI": True}})) == []
    assert "does not serve" not in notes({})


@pytest.mark.parametrize("component", ["trainer", "evaluator", "dataPrep"])
def test_an_extra_volume_named_like_one_of_the_charts_is_refused(component):
    """Every volume name the chart itself renders is refused for *.extraVolumes (the API server would
    reject the pod only after the install), read from the rendered pods so a new chart volume is covered."""
    objects = render({"dataPrep": {"enabled": True}})
    specs = [pod for pod, _ in trainer_pods(objects)] + [
        only(objects, "Job", suffix)["spec"]["template"]["spec"] for suffix in ("-eval", "-data-prep")]
    names = {v["name"] for spec in specs for v in spec.get("volumes", [])}
    assert {"data", "tmp"} <= names
    for name in sorted(names):
        with pytest.raises(helm.HelmValuesError, match="extraVolumes"):
            render({"dataPrep": {"enabled": True}, component: {"extraVolumes": [{"name": name, "emptyDir": {}}]}})
