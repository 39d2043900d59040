"""Hardening of what the chart renders: read-only root filesystems with one declared scratch path,
the opt-in NetworkPolicies, images by digest and the /metrics bind address."""

from __future__ import annotations

import copy

import pytest
from helm_python import HelmError

from tests.chart.render import ci_value_sets, only, render, validation_problems

KINDS = ("PyTorchJob", "TrainJob")
DIGEST = "sha256:" + "0123456789abcdef" * 4


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """Every pod spec in the rendered objects (Job, Pod, PyTorchJob replicas, TrainingRuntime, a
    ClusterTrainingRuntime's runtimePatches), found as the dicts holding a "containers" list."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.append((where, node))
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for o in objects:
        walk(o, f"{o['kind']}/{o['metadata']['name']}")
    return found


def containers(objects: list[dict]) -> list[tuple[str, dict, dict]]:
    return [(f"{where} {c['name']}", c, spec) for where, spec in pod_specs(objects)
            for c in spec["containers"] + spec.get("initContainers", [])]


def _renders():
    """Every ci/ value set under both job kinds, with data preparation and network policies on."""
    for name, values in ci_value_sets().items():
        for kind in KINDS:
            yield f"{name}/{kind}", _merge(values, {"jobKind": kind, "dataPrep": {"enabled": True},
                                                    "networkPolicy": {"enabled": True}})


def _render_or_none(values):
    try:
        return render(values)
    except HelmError as err:  # a value set made for one kind only (e.g. a ClusterTrainingRuntime with gang scheduling)
        assert "fail" in str(err).lower() or "cannot" in str(err), err
        return None


def test_every_container_has_a_read_only_root_and_a_tmp_emptydir():
    checked = set()
    for label, values in _renders():
        objects = _render_or_none(values)
        if objects is None:
            continue
        for where, c, spec in containers(objects):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, f"{label}: {where}"
            tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
            volume = next(v for v in spec["volumes"] if v["name"] == tmp["name"])
            assert set(volume) == {"name", "emptyDir"} and volume["emptyDir"]["sizeLimit"], f"{label}: {where}"
            checked.add(where.split(" ")[0].split("/")[0] + " " + c["name"])
    # Trainer (both kinds, and a ClusterTrainingRuntime's patch), evaluator, its gate and re-push, data prep and
    # helm test were all seen.
    assert {"PyTorchJob pytorch", "TrainingRuntime node", "TrainJob node", "Job evaluator", "Job gate",
            "CronJob repush", "Job data-prep", "Pod smoke"} <= checked, checked


@pytest.mark.parametrize("kind", KINDS)
def test_home_and_the_caches_point_into_tmp(kind):
    objects = render({"jobKind": kind, "dataPrep": {"enabled": True}})
    envs = [(where, {e["name"]: e.get("value") for e in c["env"]}) for where, c, _ in containers(objects) if "env" in c]
    if kind == "TrainJob":  # the trainer's env is on the TrainJob itself
        envs.append(("TrainJob", {e["name"]: e.get("value")
                                  for e in only(objects, "TrainJob")["spec"]["trainer"]["env"]}))
    assert len(envs) == 5  # data prep, trainer, evaluator, its gate, helm test
    for where, env in envs:
        for name in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR"):
            assert env[name] == "/tmp" or env[name].startswith("/tmp/"), (where, name, env[name])
        assert env.get("HF_HOME", "/data/hf-cache").startswith("/data/")


def test_a_component_may_turn_the_read_only_root_off_for_itself_only():
    objects = render({"trainer": {"securityContext": {"readOnlyRootFilesystem": False}}})
    by_name = {c["name"]: c["securityContext"]["readOnlyRootFilesystem"] for _, c, _ in containers(objects)}
    assert by_name == {"pytorch": False, "evaluator": True, "gate": True, "smoke": True}


# --- NetworkPolicy -------------------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _pod_labels(objects):
    """(where, labels) of every pod template (with metadata) the chart renders."""
    found = []
    for o in objects:
        if o["kind"] == "Pod":
            found.append(("Pod", o["metadata"]["labels"]))
        elif o["kind"] == "Job":
            found.append((o["metadata"]["name"], o["spec"]["template"]["metadata"]["labels"]))
        elif o["kind"] == "PyTorchJob":
            found += [(r, s["template"]["metadata"]["labels"]) for r, s in o["spec"]["pytorchReplicaSpecs"].items()]
        elif o["kind"] == "TrainingRuntime":
            job = o["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
            found.append(("TrainingRuntime", job["metadata"]["labels"]))
    return found


def test_network_policies_are_off_by_default():
    assert not [o for o in render({"dataPrep": {"enabled": True}}) if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_pod_is_under_exactly_one_policy_and_the_policies_validate(kind):
    objects = render({"jobKind": kind, "dataPrep": {"enabled": True}, "networkPolicy": {"enabled": True}})
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert len(policies) == 3 and not validation_problems(policies)
    for where, labels in _pod_labels(objects):
        selecting = [p["metadata"]["name"] for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, (where, selecting)
    # Another release's pods in the namespace are not selected.
    other = {"app.kubernetes.io/name": "r1v", "app.kubernetes.io/instance": "other",
             "app.kubernetes.io/component": "trainer"}
    assert not any(_selects(p["spec"]["podSelector"], other) for p in policies)


def test_metrics_ingress_only_from_the_monitoring_namespace_and_rendezvous_between_training_pods():
    objects = render({"networkPolicy": {"enabled": True, "monitoringNamespace": "obs",
                                        "prometheusPodSelector": {"app.kubernetes.io/name": "prometheus"}},
                      "monitoring": {"port": 9400}})
    spec = only(objects, "NetworkPolicy", "-trainer")["spec"]
    trainer = spec["podSelector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    peers, scrape = spec["ingress"]
    assert peers == {"from": [{"podSelector": trainer}]}  # every port: rendezvous, NCCL's own ports
    assert scrape["ports"] == [{"protocol": "TCP", "port": 9400}]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    egress = spec["egress"]
    assert {"to": [{"podSelector": trainer}]} in egress
    assert all("to" in rule or {p["port"] for p in rule["ports"]} == {53} for rule in egress)  # no open egress


def test_evaluator_and_data_prep_egress():
    values = {"dataPrep": {"enabled": True},
              "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
                                "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}]}}
    objects = render(values)
    evaluator = only(objects, "NetworkPolicy", "-evaluator")["spec"]
    assert "ingress" not in evaluator and "Ingress" in evaluator["policyTypes"]  # nothing may connect in
    api, push, dns, extra = evaluator["egress"]
    assert api == {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"protocol": "TCP", "port": 6443}]}
    assert push["ports"] == [{"protocol": "TCP", "port": 9091}]
    assert push["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert extra == values["networkPolicy"]["extraEgress"][0]
    prep = only(objects, "NetworkPolicy", "-data-prep")["spec"]
    assert {p["port"] for p in prep["egress"][0]["ports"]} == {443, 80}
    # No Pushgateway: no rule for it.
    off = only(render(_merge(values, {"evaluator": {"pushgatewayUrl": ""}})), "NetworkPolicy", "-evaluator")["spec"]
    assert len(off["egress"]) == 3


# --- images and /metrics -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_image_digests_are_used_when_set(kind):
    images = {c["image"] for _, c, _ in containers(render({"jobKind": kind, "dataPrep": {"enabled": True}}))
              if "image" in c}
    assert all(i.endswith(":0.1.0") for i in images), images
    objects = render({"jobKind": kind, "dataPrep": {"enabled": True},
                      "image": {"trainer": {"digest": DIGEST, "tag": "ignored"}}})
    images = {c["name"]: c["image"] for _, c, _ in containers(objects) if "image" in c}
    if kind == "TrainJob":
        images["node"] = only(objects, "TrainJob")["spec"]["trainer"]["image"]
    trainer = images.pop("pytorch" if kind == "PyTorchJob" else "node")
    assert trainer == f"ghcr.io/r1v-k8s/r1v-trainer@{DIGEST}"
    assert set(images.values()) == {"ghcr.io/r1v-k8s/r1v-evaluator:0.1.0"}  # evaluator, data prep, helm test
    objects = render({"dataPrep": {"enabled": True}, "image": {"evaluator": {"digest": DIGEST}}})
    assert {c["image"] for _, c, _ in containers(objects) if c["name"] != "pytorch"} == {
        f"ghcr.io/r1v-k8s/r1v-evaluator@{DIGEST}"}


@pytest.mark.parametrize("digest", ["0123", "sha256:XYZ", "sha512:" + "a" * 64])
def test_a_malformed_digest_is_refused_by_the_schema(digest):
    with pytest.raises(HelmError, match="digest"):
        render({"image": {"trainer": {"digest": digest}}})


def test_the_metrics_bind_address_reaches_the_trainer():
    args = only(render({"monitoring": {"bindAddress": "::"}}), "PyTorchJob")["spec"]["pytorchReplicaSpecs"][
        "Master"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--metrics_addr") + 1] == "::"
