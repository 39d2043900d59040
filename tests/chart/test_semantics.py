"""What the rendered objects mean: world size, GPUs, storage, RBAC, wiring, and bad values."""

from __future__ import annotations

import json
import shlex

import helm_python as helm
import pytest
import yaml

from tests.chart.render import (CHART, claim_of, container, kinds, notes, only, render, replica_pods)


def _job(values):
    return only(render(values), "PyTorchJob")


@pytest.mark.parametrize("nodes", [1, 2, 4, 8])
def test_world_size_is_eight_gpus_per_node(nodes):
    job = _job({"nodes": nodes})
    specs = job["spec"]["pytorchReplicaSpecs"]
    workers = specs.get("Worker", {}).get("replicas", 0)
    assert specs["Master"]["replicas"] == 1
    assert workers == nodes - 1
    # The operator rejects a Worker spec with 0 replicas, so one node means no Worker key at all.
    assert ("Worker" in specs) == (nodes > 1)
    nproc = job["spec"]["nprocPerNode"]
    assert isinstance(nproc, str)
    assert (1 + workers) * int(nproc) == 8 * nodes


@pytest.mark.parametrize("gpus", [1, 4, 8])
def test_gpu_requests_equal_limits_equal_gpus_per_node(gpus):
    job = _job({"nodes": 3, "gpusPerNode": gpus})
    assert job["spec"]["nprocPerNode"] == str(gpus)
    for pod in replica_pods(job).values():
        res = container(pod, "pytorch")["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == gpus


def test_trainer_command_is_the_launcher_over_torchrun_args_with_the_allowed_overrides():
    objects = render({"runName": "exp1", "trainer": {"extraArgs": ["--max_steps", "200"]}})
    c = container(replica_pods(only(objects, "PyTorchJob"))["Master"], "pytorch")
    # files/launch.sh runs the checks, then `torchrun ARGS` (tests/chart/test_launcher.py).
    assert c["command"] == ["sh", "/opt/r1v/scripts/launch.sh"]
    scripts = only(objects, "ConfigMap", "-scripts")["data"]
    assert scripts["launch.sh"] == (CHART / "files" / "launch.sh").read_text()
    mount = next(m for m in c["volumeMounts"] if m["name"] == "scripts")
    assert mount["mountPath"] == "/opt/r1v/scripts"
    argv = c["args"]
    assert argv[:4] == ["-m", "r1v_job", "--config", "/etc/r1v/recipe.yaml"]
    flags = dict(zip(argv[2::2], argv[3::2]))
    assert flags["--output_dir"] == "/data/runs/exp1"
    assert flags["--model_name_or_path"] == "/data/models/Qwen2-VL-2B-Instruct"
    assert flags["--dataset_name"] == "/data/datasets/clevr_cogen_a_train"
    assert flags["--deepspeed"] == "/etc/r1v/zero2.json"
    assert flags["--metrics_port"] == "8000"
    assert flags["--metrics_grace_seconds"] == "60"
    assert argv[-2:] == ["--max_steps", "200"]
    # torchrun takes its topology from the operator's PET_* env, so the chart must not pin it.
    assert not any(a.startswith(("--nnodes", "--nproc", "--node_rank", "--master")) for a in argv)


@pytest.mark.parametrize("interval, grace", [("15s", "60"), ("45s", "90"), ("2m", "240"), ("1h", "7200"),
                                             ("40000ms", "80")])
def test_metrics_stay_up_for_two_scrape_intervals_after_the_final_model(interval, grace):
    argv = container(replica_pods(_job({"monitoring": {"interval": interval}}))["Master"], "pytorch")["args"]
    assert argv[argv.index("--metrics_grace_seconds") + 1] == grace


@pytest.mark.parametrize("values, budget", [({}, True), ({"trainer": {"restartPolicy": "OnFailure"}}, False)])
def test_the_launcher_keeps_the_restart_budget_the_operator_does_not_keep_under_exit_code(values, budget):
    job = _job({**values, "runPolicy": {"backoffLimit": 5}, "runName": "exp1"})
    for pod in replica_pods(job).values():
        env = {e["name"]: e for e in container(pod, "pytorch")["env"]}
        assert ("R1V_MAX_RESTARTS" in env) == budget
        if budget:
            assert env["R1V_MAX_RESTARTS"]["value"] == "5" and env["R1V_OUTPUT_DIR"]["value"] == "/data/runs/exp1"
            assert env["R1V_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_deepspeed_none_drops_the_flag_and_zero2_switches_file():
    master = replica_pods(_job({"trainer": {"deepspeed": "none"}}))["Master"]
    assert "--deepspeed" not in container(master, "pytorch")["args"]
    args = container(replica_pods(_job({"trainer": {"deepspeed": "zero2"}}))["Master"], "pytorch")["args"]
    assert args[args.index("--deepspeed") + 1] == "/etc/r1v/zero2.json"


def test_pod_template_basics():
    job = _job({"nodes": 2})
    for rtype, pod in replica_pods(job).items():
        spec = job["spec"]["pytorchReplicaSpecs"][rtype]
        assert spec["restartPolicy"] == "ExitCode"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        mounts = {m["mountPath"]: m["name"] for m in container(pod, "pytorch")["volumeMounts"]}
        assert mounts["/dev/shm"] == "dshm" and mounts["/etc/r1v"] == "recipe"
        env = {e["name"]: e.get("value") for e in container(pod, "pytorch")["env"]}
        assert env["NCCL_DEBUG"] == "WARN"
    def ports(r):
        return {p["name"] for p in container(replica_pods(job)[r], "pytorch")["ports"]}
    assert ports("Master") == {"pytorchjob-port", "metrics"}
    assert ports("Worker") == {"pytorchjob-port"}  # rank 0 alone serves /metrics


def test_gpu_product_adds_to_the_node_selector():
    pod = replica_pods(_job({"trainer": {"gpuProduct": "NVIDIA-H100-80GB-HBM3",
                                         "nodeSelector": {"pool": "a"}}}))["Master"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "a"}


def test_scheduling_overrides_and_nccl_settings_reach_every_pod():
    values = {"nodes": 2,
              "trainer": {"gpuProduct": "", "nodeSelector": {"pool": "h100"}, "tolerations": [],
                          "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                              {"topologyKey": "kubernetes.io/hostname",
                               "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "trainer"}}}]}},
                          "nccl": {"NCCL_DEBUG": "INFO", "NCCL_IB_HCA": "mlx5"}}}
    for pod in replica_pods(_job(values)).values():
        assert pod["nodeSelector"] == {"pool": "h100"}
        assert "tolerations" not in pod
        assert "podAntiAffinity" in pod["affinity"]
        env = {e["name"]: e.get("value") for e in container(pod, "pytorch")["env"]}
        assert env["NCCL_DEBUG"] == "INFO" and env["NCCL_IB_HCA"] == "mlx5"


def test_run_policy_always_rendered_without_ttl_by_default():
    policy = _job({})["spec"]["runPolicy"]
    assert policy == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    policy = _job({"runPolicy": {"ttlSecondsAfterFinished": 0, "activeDeadlineSeconds": 60}})["spec"]["runPolicy"]
    assert policy["ttlSecondsAfterFinished"] == 0 and policy["activeDeadlineSeconds"] == 60


def test_gang_scheduling():
    job = _job({"nodes": 3, "gangScheduling": {"enabled": True, "schedulerName": "volcano", "queue": "q"}})
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 3, "queue": "q"}
    assert all(p["schedulerName"] == "volcano" for p in replica_pods(job).values())
    assert "schedulingPolicy" not in _job({"nodes": 3})["spec"]["runPolicy"]


# --- storage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, claim", [({}, "r1v-data"), ({"storage": {"existingClaim": "shared"}}, "shared")])
def test_one_claim_shared_by_trainer_evaluator_data_prep_and_test(values, claim):
    values = {**values, "nodes": 2, "dataPrep": {"enabled": True}}
    objects = render(values)
    pvcs = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    if claim == "r1v-data":
        assert [p["metadata"]["name"] for p in pvcs] == ["r1v-data"]
        assert pvcs[0]["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pvcs[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert pvcs == []
    pods = list(replica_pods(only(objects, "PyTorchJob")).values())
    pods += [only(objects, "Job", "-eval")["spec"]["template"]["spec"],
             only(objects, "Job", "-data-prep")["spec"]["template"]["spec"],
             only(objects, "Pod")["spec"]]
    assert {claim_of(p) for p in pods} == {claim}


def test_data_prep_marker_is_what_the_launcher_waits_for():
    objects = render({"nodes": 2, "dataPrep": {"enabled": True, "hfTokenSecret": {"name": "hf", "key": "tok"}}})
    prep = only(objects, "Job", "-data-prep")["spec"]["template"]["spec"]["containers"][0]
    marker = prep["args"][prep["args"].index("--marker") + 1]
    token = next(e for e in prep["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "tok"}
    for pod in replica_pods(only(objects, "PyTorchJob")).values():
        assert {"name": "R1V_DATA_MARKER", "value": marker} in container(pod, "pytorch")["env"]
    # Training reads exactly what data prep writes.
    args = container(replica_pods(only(objects, "PyTorchJob"))["Master"], "pytorch")["args"]
    assert args[args.index("--model_name_or_path") + 1] == prep["args"][prep["args"].index("--model-dir") + 1]
    assert args[args.index("--dataset_name") + 1] == prep["args"][prep["args"].index("--dataset-dir") + 1]
    # The script the Job runs is the chart's file.
    script = only(objects, "ConfigMap", "-scripts")["data"]["data_prep.py"]
    assert script == (CHART / "files" / "data_prep.py").read_text()
    assert prep["command"] == ["python", "/opt/r1v/scripts/data_prep.py"]


def test_no_marker_wait_without_data_prep():
    for pod in replica_pods(_job({"nodes": 2})).values():
        assert "R1V_DATA_MARKER" not in {e["name"] for e in container(pod, "pytorch")["env"]}
        assert "initContainers" not in pod


# --- recipe ----------------------------------------------------------------------------------------

def test_default_recipe_is_the_seed_recipe_and_deepspeed_configs_are_the_repos():
    cm = only(render({}), "ConfigMap", "-recipe")["data"]
    repo = CHART.parents[1] / "recipes"
    seed = yaml.safe_load((repo / "r1v_qwen2vl_2b_clevr.yaml").read_text())
    rendered = yaml.safe_load(cm["recipe.yaml"])
    owned = {"model_name_or_path", "dataset_name", "output_dir", "deepspeed", "metrics_port", "metrics_grace_seconds"}
    # Every seed key is there with its value (Helm spells 1.0e-6 as 1e-06: the same number to the trainer).
    assert set(rendered) == set(seed) | owned
    assert {k: _number(v) for k, v in rendered.items() if k not in owned} == \
        {k: _number(v) for k, v in seed.items() if k not in owned}
    assert json.loads(cm["zero3.json"]) == json.loads((repo / "zero3.json").read_text())
    assert json.loads(cm["zero2.json"]) == json.loads((repo / "zero2.json").read_text())


def _number(v):
    try:
        return float(v) if not isinstance(v, bool) else v
    except (TypeError, ValueError):
        return v


def test_existing_configmap_replaces_the_charts_recipe_file():
    objects = render({"recipe": {"existingConfigMap": "mine", "existingConfigMapKey": "r.yaml"}})
    assert "recipe.yaml" not in only(objects, "ConfigMap", "-recipe")["data"]
    sources = next(v for v in replica_pods(only(objects, "PyTorchJob"))["Master"]["volumes"]
                   if v["name"] == "recipe")["projected"]["sources"]
    assert sources[1]["configMap"] == {"name": "mine", "items": [{"key": "r.yaml", "path": "recipe.yaml"}]}


# --- evaluator -------------------------------------------------------------------------------------

def test_evaluator_command_matches_the_interface():
    objects = render({"runName": "exp1"}, namespace="team-a")
    c = only(objects, "Job", "-eval")["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "eval_job"]
    a = dict(zip(c["args"][::2], c["args"][1::2]))
    assert a == {"--model": "/data/runs/exp1", "--checkpoints": "/data/runs/exp1",
                 "--data": "/data/datasets/superclevr/superclevr_test200_counting_problems.jsonl",
                 "--image-root": "/data/datasets/superclevr", "--out": "/data/runs/exp1/eval",
                 "--wait-for": "marker", "--timeout": "900", "--poll-interval": "5",
                 "--namespace": "team-a", "--pushgateway": "http://prometheus-pushgateway.monitoring.svc:9091",
                 "--run": "exp1"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_evaluator_without_pushgateway_or_gpu():
    evaluator = only(render({"evaluator": {"pushgatewayUrl": "", "gpus": 0}}), "Job", "-eval")
    c = evaluator["spec"]["template"]["spec"]["containers"][0]
    assert "--pushgateway" not in c["args"] and "--run" not in c["args"]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]


def test_evaluator_role_grants_reading_the_one_pytorchjob_and_resuming_the_one_evaluation_job():
    objects = render({})
    role = only(objects, "Role")
    granted = {(g, r, n, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for n in rule["resourceNames"] for v in rule["verbs"]}
    assert granted == {("kubeflow.org", "pytorchjobs", "r1v", "get"), ("batch", "jobs", "r1v-eval", "patch")}
    assert all(set(rule) == {"apiGroups", "resources", "resourceNames", "verbs"} for rule in role["rules"])
    # Without an evaluation there is nothing to resume: the helm test's read only.
    (rule,) = only(render({"evaluator": {"enabled": False}}), "Role")["rules"]
    assert rule["verbs"] == ["get"] and rule["resourceNames"] == ["r1v"]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = only(objects, "RoleBinding")
    sa = only(objects, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "r1v"}]
    eval_pod = only(objects, "Job", "-eval")["spec"]["template"]["spec"]
    gate_pod = only(objects, "Job", "-eval-gate")["spec"]["template"]["spec"]
    assert eval_pod["serviceAccountName"] == gate_pod["serviceAccountName"] == sa["metadata"]["name"]
    # Only the gate gets an API token; the evaluator reads the volume and the trainer runs user code, with none.
    assert gate_pod["automountServiceAccountToken"] is True and eval_pod["automountServiceAccountToken"] is False
    assert all(p["automountServiceAccountToken"] is False for p in replica_pods(only(objects, "PyTorchJob")).values())


# --- monitoring ------------------------------------------------------------------------------------

def test_service_monitor_selects_the_metrics_service_which_selects_rank_zero():
    objects = render({"monitoring": {"labels": {"release": "kps", "team": "ml"}}})
    sm, svc = only(objects, "ServiceMonitor"), only(objects, "Service", "-metrics")
    assert sm["metadata"]["labels"]["release"] == "kps" and sm["metadata"]["labels"]["team"] == "ml"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    job = only(objects, "PyTorchJob")
    assert svc["spec"]["selector"] == {"training.kubeflow.org/job-name": job["metadata"]["name"],
                                       "training.kubeflow.org/replica-type": "master",
                                       "training.kubeflow.org/replica-index": "0"}
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    relabel = sm["spec"]["endpoints"][0]["relabelings"][0]
    assert relabel["targetLabel"] == "run" and relabel["replacement"] == "r1v"


def test_pod_monitor_selects_the_master_pod_labels():
    objects = render({"nodes": 2, "monitoring": {"kind": "PodMonitor", "labels": {"prometheus": "x"}}})
    pm = only(objects, "PodMonitor")
    assert "ServiceMonitor" not in kinds(objects)
    assert pm["metadata"]["labels"]["prometheus"] == "x"
    master_labels = replica_pods(only(objects, "PyTorchJob"))  # template labels + operator's labels
    job = only(objects, "PyTorchJob")
    template_labels = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    operator_labels = {"training.kubeflow.org/replica-type": "master"}
    assert pm["spec"]["selector"]["matchLabels"].items() <= {**template_labels, **operator_labels}.items()
    assert master_labels and pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_monitoring_off_renders_no_prometheus_operator_objects():
    objects = render({"monitoring": {"enabled": False}})
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com")]
    assert not [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]


def test_dashboard_configmap_carries_every_dashboard_file_and_the_sidecar_label():
    cm = only(render({"monitoring": {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": "0", "team": "ml"},
                                                          "namespace": "monitoring"}}}), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "ml"
    assert cm["metadata"]["namespace"] == "monitoring"
    files = sorted((CHART / "dashboards").glob("*.json"))
    uid = "r1v-k8s-training"  # monitoring.dashboard.uid's default
    assert files and sorted(cm["data"]) == [f"{uid}-{f.name}" for f in files]
    for f in files:
        assert json.loads(cm["data"][f"{uid}-{f.name}"]) == {**json.loads(f.read_text()), "uid": uid}


def test_the_dashboard_ships_once_per_cluster_under_the_uid_its_owner_sets():
    # Off by default: a release does not ship it unless it is the one that owns it.
    assert not [o for o in render() if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    # Named by uid, not by release: two owning releases collide on one name (Helm refuses the second).
    owner = {"monitoring": {"dashboard": {"enabled": True, "uid": "ml-team-r1v"}}}
    first, second = (only(render(owner, name=n), "ConfigMap", "-dashboard") for n in ("exp1", "exp2"))
    assert first["metadata"]["name"] == second["metadata"]["name"] == "ml-team-r1v-dashboard"
    (text,) = first["data"].values()
    assert json.loads(text)["uid"] == "ml-team-r1v"


# --- names, labels, NOTES ----------------------------------------------------------------------------

def test_every_object_has_the_standard_labels():
    for o in render({"dataPrep": {"enabled": True}}):
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "r1v", o["kind"]
        assert labels["app.kubernetes.io/instance"] == "r1v"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert "app.kubernetes.io/component" in labels


def test_release_names_that_the_operator_would_reject_fail_at_render_time():
    with pytest.raises(helm.HelmRenderError, match="DNS-1035"):
        render({}, name="9lives")
    long = "a" * 53
    name = only(render({}, name=long), "PyTorchJob")["metadata"]["name"]
    # Room for the operator's "-worker-NNN" suffix within a 63-character Service name.
    assert len(name) <= 48


def test_notes_give_exact_commands_for_this_release():
    text = notes({"nodes": 2}, name="exp", namespace="team-a")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(("kubectl", "helm"))]
    assert "kubectl -n team-a logs -f exp-r1v-master-0 -c pytorch" in lines
    assert "kubectl -n team-a get pytorchjob exp-r1v -w" in lines
    assert "kubectl -n team-a logs -f job/exp-r1v-eval" in lines
    assert "helm test exp -n team-a --logs" in lines
    run = next(cmd for cmd in lines if cmd.startswith("kubectl -n team-a run "))
    overrides = json.loads(shlex.split(run)[-1].split("=", 1)[1])
    assert overrides["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "exp-r1v-data"
    assert overrides["spec"]["containers"][0]["command"][-1] == "/data/runs/exp-r1v/eval/scores.json"


def test_helm_test_pod_is_a_test_hook_using_the_evaluator_identity():
    objects = render({})
    pod = only(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "r1v-eval"
    assert pod["spec"]["containers"][0]["command"] == ["python", "/opt/r1v/scripts/helm_test.py"]
    script = only(objects, "ConfigMap", "-scripts")["data"]["helm_test.py"]
    assert script == (CHART / "files" / "helm_test.py").read_text()
    compile(script, "helm_test.py", "exec")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["JOB_API"] == "kubeflow.org/v1/pytorchjobs" and env["JOB"] == "r1v"
    assert "Pod" not in kinds(render({"tests": {"enabled": False}}))


# --- bad values are rejected by the schema, naming the key -------------------------------------------

@pytest.mark.parametrize("values, key", [
    ({"nodes": 0}, "/nodes"),
    ({"nodes": "2"}, "/nodes"),
    ({"gpusPerNode": 9}, "/gpusPerNode"),
    ({"gpusPerNode": 0}, "/gpusPerNode"),
    ({"nodez": 2}, "nodez"),
    ({"trainer": {"deepspeed": "zero4"}}, "/trainer/deepspeed"),
    ({"trainer": {"gpus": 8}}, "gpus"),
    ({"storage": {"existingClaim": "Bad_Name"}}, "/storage/existingClaim"),
    ({"monitoring": {"kind": "Probe"}}, "/monitoring/kind"),
    ({"trainer": {"nccl": {"OMP_NUM_THREADS": "4"}}}, "OMP_NUM_THREADS"),
    ({"runPolicy": {"cleanPodPolicy": "Sometimes"}}, "/runPolicy/cleanPodPolicy"),
    ({"trainer": {"tolerations": [{"key": "k", "operater": "Exists"}]}}, "operater"),
])
def test_bad_values_are_rejected_naming_the_key(values, key):
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert key in str(err.value)


def test_schema_closes_every_fixed_key_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            # Closed (false) or a typed map (a schema for every other key) both reject a stray key.
            if node.get("type") == "object" and "properties" in node and not (
                    node.get("additionalProperties") is False or isinstance(node.get("additionalProperties"), dict)):
                open_objects.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
    walk(schema, "")
    assert open_objects == []
    # And the defaults satisfy it (Helm would refuse to install otherwise).
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_evaluator_is_retried_only_when_a_retry_can_help():
    policy = only(render({}), "Job", "-eval")["spec"]["podFailurePolicy"]["rules"]
    fail_codes = {code for rule in policy if rule["action"] == "FailJob" for code in rule["onExitCodes"]["values"]}
    assert 3 in fail_codes        # training failed: evaluating again cannot succeed
    assert 5 not in fail_codes    # results on disk, push failed: a retry pushes them
    assert all(r["onExitCodes"]["containerName"] == "evaluator" for r in policy if "onExitCodes" in r)


def test_data_prep_fails_at_once_on_a_bad_pinned_file_and_never_counts_a_sigterm():
    job = only(render({"dataPrep": {"enabled": True}}), "Job", "-data-prep")
    container = job["spec"]["template"]["spec"]["containers"][0]["name"]
    policy = job["spec"]["podFailurePolicy"]["rules"]
    by_action = {(r["action"], code) for r in policy if "onExitCodes" in r for code in r["onExitCodes"]["values"]}
    assert ("FailJob", 2) in by_action and ("Ignore", 143) in by_action and ("FailJob", 1) not in by_action
    assert all(r["onExitCodes"]["containerName"] == container for r in policy if "onExitCodes" in r)


def test_notes_warn_that_a_bare_install_needs_the_model_and_data_on_the_volume():
    text = notes({})
    assert "WARNING: dataPrep.enabled=false" in text
    assert "/data/models/Qwen2-VL-2B-Instruct" in text and "/data/datasets/clevr_cogen_a_train" in text
    assert "kubectl -n r1v logs r1v-master-0 -c pytorch | grep 'r1v launch'" in text
    assert "WARNING: dataPrep" not in notes({"dataPrep": {"enabled": True}})
