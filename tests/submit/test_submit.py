"""`python -m r1v_submit`: the chart's objects, rendered by Helm's engine from Helm's --set grammar,
created through the kubernetes and kubeflow-training clients, for both job kinds.

The API server here is kmock's KubernetesEmulator (tests/helpers.py): a fake, in-memory
Kubernetes API on a local port (no admission webhooks, no operator, no scheduler). It stores what
the real clients send, so the tests check the stored objects and play the operator's part by hand
(a Running rank-0 pod, a log, a final condition).
"""

from __future__ import annotations

import copy
import json
import shutil

import helm_python as helm
import kmock
import pytest
import yaml

from r1v_submit import __main__ as submit
from tests.chart.render import ALL_APIS, CHART, ci_value_sets, only, render
from tests.helpers import FakeKubernetes

PODS = kmock.resource("", "v1", "pods")
PYTORCHJOBS = kmock.resource("kubeflow.org", "v1", "pytorchjobs")
TRAINJOBS = kmock.resource("trainer.kubeflow.org", "v1alpha1", "trainjobs")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")

SETS = {"defaults": {}, **ci_value_sets()}


def set_json(values: dict) -> list[str]:
    """The value set as `--set-json KEY=JSON` flags, one per top-level key."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def _one_install_id(objects: list[dict]) -> list[dict]:
    """Each render draws a new install id (the launcher's crash budget key): compared as one."""
    text = yaml.safe_dump_all(objects)
    ids = {e["value"] for o in objects for e in _envs(o) if e.get("name") == "R1V_INSTALL_ID"}
    for install_id in ids:
        text = text.replace(install_id, "INSTALL-ID")
    return [d for d in yaml.safe_load_all(text) if d]


def _envs(o):
    found = []

    def walk(x):
        if isinstance(x, dict):
            if isinstance(x.get("env"), list):
                found.extend(e for e in x["env"] if isinstance(e, dict))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(o)
    return found


def dry_run(capsys, argv: list[str]) -> list[dict]:
    assert submit.main(argv + ["--dry-run"]) == 0, capsys.readouterr().err
    return _one_install_id([d for d in yaml.safe_load_all(capsys.readouterr().out) if d])


def _chart_side(objects: list[dict]) -> list[dict]:
    """The chart's rendering as submit creates it: no hooks, managed by r1v-submit instead of Helm."""
    out = []
    for o in copy.deepcopy(objects):
        if "helm.sh/hook" in (o["metadata"].get("annotations") or {}):
            continue
        o["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "r1v-submit"
        out.append(o)
    return _one_install_id(out)


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
@pytest.mark.parametrize("name", sorted(SETS))
def test_submit_objects_equal_the_charts_rendering(capsys, name, kind):
    values = {**SETS[name], "jobKind": kind} if "jobKind" not in SETS[name] else SETS[name]
    if values.get("trainJob", {}).get("clusterTrainingRuntime") and kind == "PyTorchJob":
        values = {k: v for k, v in values.items() if k != "trainJob"}
    apis = sum((["--api-versions", a] for a in ALL_APIS), [])
    got = dry_run(capsys, ["--release", "exp", "-n", "team-a", *set_json(values), *apis])
    assert got == _chart_side(render(values, name="exp", namespace="team-a"))
    assert any(o["kind"] == values["jobKind"] for o in got)


def test_the_comparison_would_notice_a_difference(capsys):
    got = dry_run(capsys, ["--release", "exp", "-n", "r1v", "--set", "nodes=3"])
    assert got != _chart_side(render({"nodes": 2}, name="exp", api_versions=[]))


def test_helm_set_grammar_lists_nested_keys_and_several_pairs(capsys):
    got = dry_run(capsys, ["--release", "exp", "-n", "r1v", "--set", "nodes=2,gpusPerNode=4",
                           "--set", "trainer.extraArgs={--max_steps,200}",
                           "--set", "trainer.tolerations[0].key=gpu,trainer.tolerations[0].operator=Exists",
                           "--set-string", "trainer.nccl.NCCL_IB_HCA=mlx5"])
    job = only(got, "PyTorchJob")
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1 and job["spec"]["nprocPerNode"] == "4"
    assert master["containers"][0]["args"][-2:] == ["--max_steps", "200"]
    assert master["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert {"name": "NCCL_IB_HCA", "value": "mlx5"} in master["containers"][0]["env"]


def test_values_files_merge_in_order_before_set(capsys, tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("nodes: 4\ntrainer:\n  gpuProduct: NVIDIA-H100-80GB-HBM3\n")
    second.write_text("nodes: 3\n")
    got = dry_run(capsys, ["-f", str(first), "-f", str(second), "--set", "gpusPerNode=2"])
    job = only(got, "PyTorchJob")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2 and job["spec"]["nprocPerNode"] == "2"
    selector = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["nodeSelector"]
    assert selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


@pytest.mark.parametrize("argv, message", [
    (["--set", "nodes=0"], "/nodes"),
    (["--set", "gpusPerNode=9"], "/gpusPerNode"),
    (["--set", "nodez=2"], "nodez"),
    (["--set", "trainer.gpuProdcut=H100"], "gpuProdcut"),  # a nested typo
    (["--set", "trainer.tolerations[0].operater=Exists"], "operater"),
    (["--set", "storage.size=abc"], "/storage/size"),
    (["--set", "jobKind=MPIJob"], "/jobKind"),
    (["--set", "nodes"], "--set nodes"),  # not key=value
    (["--release", "9lives"], "9lives"),
])
def test_bad_values_are_refused_before_anything_is_sent(argv, message, capsys):
    assert submit.main(argv + ["--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_chart_option_swaps_templates_and_files_not_only_values(capsys, tmp_path):
    mine = tmp_path / "r1v"
    shutil.copytree(CHART, mine, symlinks=False)
    (mine / "files" / "launch.sh").write_text("exec torchrun \"$@\"\n")
    got = dry_run(capsys, ["--chart", str(mine)])
    assert only(got, "ConfigMap", "-scripts")["data"]["launch.sh"] == "exec torchrun \"$@\"\n"


def test_the_packaged_chart_is_the_repositorys_chart():
    from r1v_submit.chart import CHART as PACKAGED

    assert PACKAGED.resolve() == CHART.resolve()


# --- against the fake API server ---------------------------------------------------------------------

@pytest.fixture
def cluster():
    fake = FakeKubernetes()
    # kmock does not serve discovery: answer it as a cluster with all three operators would.
    groups = [{"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
               "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
              for gv in ["batch/v1", "rbac.authorization.k8s.io/v1", *ALL_APIS]]
    fake.emulator["get /apis/"] << {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    # kmock says v1.26.4; a Trainer v2.3 cluster runs 1.31 or newer.
    fake.emulator["get /version"] << {"major": "1", "minor": "31", "gitVersion": "v1.31.4"}
    # RBAC as the API server answers a SelfSubjectAccessReview: all allowed but what a test denies.
    fake.denied = set()

    def review(request):
        for key in [k for k in fake.emulator.objects if k[0].plural == "selfsubjectaccessreviews"]:
            del fake.emulator.objects[key]  # kmock stores it like any POST; an API server answers and keeps nothing
        asked = request.data["spec"]["resourceAttributes"]
        allowed = (asked["verb"], asked["resource"]) not in fake.denied
        return {**request.data, "status": {"allowed": allowed, **({} if allowed else {"reason": "RBAC: no rule"})}}
    fake.emulator["post /apis/authorization.k8s.io/v1/selfsubjectaccessreviews"] << review
    yield fake
    fake.close()


def _play_operator(cluster, ns: str, pod: str, labels: dict, jobs, job: str, outcome: str, lines: bytes):
    """A Running rank-0 pod whose log, once read to the end, leaves the job in `outcome`."""
    cluster.emulator.objects[PODS, ns, pod] = {
        "apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"},
        "metadata": {"name": pod, "namespace": ns, "labels": labels}}

    def log(_request):
        cluster.emulator.objects[jobs, ns, job].patch({"status": {"conditions": [{"type": outcome, "status": "True"}]}})
        return lines
    cluster.emulator[f"get /api/v1/namespaces/{ns}/pods/{pod}/log"] << log


def _stored(cluster, resource, ns, name) -> dict:
    return {k: v for k, v in dict(cluster.emulator.objects[resource, ns, name].raw).items() if k != "status"}


def test_submit_creates_the_charts_objects_and_follows_the_master_log(cluster, capsys):
    labels = {"training.kubeflow.org/job-name": "exp-r1v", "training.kubeflow.org/replica-type": "master"}
    _play_operator(cluster, "team-a", "exp-r1v-master-0", labels, PYTORCHJOBS, "exp-r1v", "Succeeded",
                   b"step 1/100 reward 0.41\nstep 2/100 reward 0.55\n")
    argv = ["--release", "exp", "-n", "team-a", "--set", "nodes=2", "--set", "runName=exp1"]
    assert submit.main(argv, configuration=cluster.configuration()) == 0

    out = capsys.readouterr().out
    assert "[Pod exp-r1v-master-0]: step 2/100 reward 0.55" in out
    assert "PyTorchJob team-a/exp-r1v succeeded" in out
    chart_objects = _chart_side(render({"nodes": 2, "runName": "exp1"}, name="exp", namespace="team-a"))
    job = _stored(cluster, PYTORCHJOBS, "team-a", "exp-r1v")
    job["metadata"].pop("namespace", None)
    (job,) = _one_install_id([job])
    # Through TrainingClient.create_job's typed model, unchanged but for quantities spelled as strings (8 -> "8").
    assert _diff(_quantities_as_text(job), _quantities_as_text(only(chart_objects, "PyTorchJob"))) == []
    for kind, suffix in (("ConfigMap", "-recipe"), ("ConfigMap", "-scripts")):
        want = only(chart_objects, kind, suffix)
        assert cluster.emulator.objects[CONFIGMAPS, "team-a", want["metadata"]["name"]].raw["data"] == want["data"]
    assert cluster.emulator.objects[PVCS, "team-a", "exp-r1v-data"].raw["spec"] == \
        only(chart_objects, "PersistentVolumeClaim")["spec"]
    # Every object the chart renders was created, the monitor included (the cluster serves its API).
    created = {(key[0].plural, key[2]) for key in cluster.emulator.objects if key[0] != PODS}
    assert created == {(kind_plural(o["kind"]), o["metadata"]["name"]) for o in chart_objects}
    log_requests = [r for r in cluster.emulator if r.method == "GET" and str(r.url).split("?")[0].endswith("/log")]
    assert log_requests
    assert "follow=True" in str(log_requests[0].url) and "container=pytorch" in str(log_requests[0].url)


def test_follow_streams_a_recreated_pod_of_the_same_name_again(cluster, capsys):
    """Under ExitCode the operator recreates a crashed PyTorchJob pod under its old name."""
    from r1v_submit.cluster import Cluster

    ns, pod, job = "team-a", "exp-r1v-master-0", "exp-r1v"
    labels = {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": "master"}
    cluster.emulator.objects[PYTORCHJOBS, ns, job] = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                      "metadata": {"name": job, "namespace": ns}, "spec": {}}
    lives = iter([b"step 7/100 crashed\n", b"resumed at step 5\n"])

    def put_pod(uid):
        cluster.emulator.objects[PODS, ns, pod] = {
            "apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"},
            "metadata": {"name": pod, "namespace": ns, "uid": uid, "labels": labels}}

    def log(_request):
        text = next(lives)
        if text.startswith(b"step"):  # the first pod's log ends: the operator recreates it
            put_pod("uid-2")
        else:
            cluster.emulator.objects[PYTORCHJOBS, ns, job].patch(
                {"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}})
        return text

    put_pod("uid-1")
    cluster.emulator[f"get /api/v1/namespaces/{ns}/pods/{pod}/log"] << log
    from kubernetes import client

    assert Cluster(client.ApiClient(cluster.configuration())).follow("PyTorchJob", job, ns, poll_seconds=0.01,
                                                                     timeout_seconds=30)
    out = capsys.readouterr().out
    assert "[Pod exp-r1v-master-0]: step 7/100 crashed" in out and "[Pod exp-r1v-master-0]: resumed at step 5" in out


def kind_plural(kind: str) -> str:
    from r1v_submit.cluster import PLURALS

    return PLURALS[kind]


def test_submit_a_trainjob_and_follow_it_to_complete(cluster, capsys):
    labels = {"jobset.sigs.k8s.io/jobset-name": "exp-r1v", "batch.kubernetes.io/job-completion-index": "0"}
    _play_operator(cluster, "ns", "exp-r1v-node-0-0-abcde", labels, TRAINJOBS, "exp-r1v", "Complete", b"step 1/100\n")
    argv = ["--release", "exp", "-n", "ns", "--set", "jobKind=TrainJob,nodes=2",
            "--set", "kueue.queueName=research"]
    assert submit.main(argv, configuration=cluster.configuration()) == 0
    out = capsys.readouterr().out
    assert "[Pod exp-r1v-node-0-0-abcde]: step 1/100" in out and "TrainJob ns/exp-r1v succeeded" in out
    job = _stored(cluster, TRAINJOBS, "ns", "exp-r1v")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
    assert job["spec"]["trainer"]["numNodes"] == 2
    runtime = cluster.emulator.objects[kmock.resource("trainer.kubeflow.org", "v1alpha1", "trainingruntimes"),
                                       "ns", "exp-r1v"].raw
    assert runtime["spec"]["mlPolicy"]["numNodes"] == 2


def test_submit_reports_a_failed_job_and_keeps_an_existing_claim(cluster, capsys):
    labels = {"training.kubeflow.org/job-name": "exp-r1v", "training.kubeflow.org/replica-type": "master"}
    _play_operator(cluster, "ns", "exp-r1v-master-0", labels, PYTORCHJOBS, "exp-r1v", "Failed", b"CUDA out of memory\n")
    cluster.emulator.objects[PVCS, "ns", "exp-r1v-data"] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "exp-r1v-data", "namespace": "ns"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}}}
    assert submit.main(["--release", "exp", "-n", "ns"], configuration=cluster.configuration()) == 1
    out = capsys.readouterr().out
    assert "PersistentVolumeClaim ns/exp-r1v-data kept" in out and "PyTorchJob ns/exp-r1v failed" in out
    # The claim of an earlier run, checkpoints and all, is reused as it was.
    assert cluster.emulator.objects[PVCS, "ns", "exp-r1v-data"].raw["spec"]["resources"]["requests"]["storage"] == "1Ti"


def _snapshot(cluster) -> dict:
    return {key: json.dumps(dict(obj.raw), sort_keys=True) for key, obj in cluster.emulator.objects.items()}


def _writes(cluster) -> list[str]:
    return [f"{r.method} {r.url}" for r in cluster.emulator if r.method in ("POST", "PUT", "PATCH", "DELETE")
            and "selfsubjectaccessreviews" not in str(r.url)]  # a question, not a write


def test_a_refused_resubmission_leaves_every_existing_object_byte_identical(cluster, capsys):
    argv = ["--release", "exp", "-n", "ns", "--no-follow"]
    assert submit.main(argv, configuration=cluster.configuration()) == 0
    assert "kubectl -n ns logs -f exp-r1v-master-0 -c pytorch" in capsys.readouterr().out  # NOTES.txt
    before, writes = _snapshot(cluster), len(_writes(cluster))
    again = argv + ["--set-json", 'recipe.inline={"learning_rate":0.5}', "--set", "nodes=4"]
    assert submit.main(again, configuration=cluster.configuration()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PyTorchJob ns/exp-r1v already exists") and "nothing was changed" in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(cluster) == before  # the running job's next restart still reads its own recipe
    assert _writes(cluster)[writes:] == []
    recipe = cluster.emulator.objects[CONFIGMAPS, "ns", "exp-r1v-recipe"].raw["data"]["recipe.yaml"]
    assert yaml.safe_load(recipe)["learning_rate"] == 1.0e-6


def test_without_a_job_a_resubmission_updates_the_objects_and_keeps_the_claim(cluster, capsys):
    argv = ["--release", "exp", "-n", "ns", "--no-follow"]
    assert submit.main(argv, configuration=cluster.configuration()) == 0
    del cluster.emulator.objects[PYTORCHJOBS, "ns", "exp-r1v"]  # finished and deleted: "run again"
    for job in ("exp-r1v-eval", "exp-r1v-eval-gate"):
        del cluster.emulator.objects[kmock.resource("batch", "v1", "jobs"), "ns", job]
    capsys.readouterr()
    assert submit.main(argv + ["--set", "recipe.inline.stop_at_step=200"], configuration=cluster.configuration()) == 0
    out = capsys.readouterr().out
    assert "ConfigMap ns/exp-r1v-recipe updated" in out and "PersistentVolumeClaim ns/exp-r1v-data kept" in out
    recipe = cluster.emulator.objects[CONFIGMAPS, "ns", "exp-r1v-recipe"].raw["data"]["recipe.yaml"]
    assert yaml.safe_load(recipe)["stop_at_step"] == 200


def test_a_refusing_api_server_is_one_line_exit_2_and_nothing_written(cluster, capsys):
    cluster.emulator["get /api/v1/namespaces/ns/configmaps/exp-r1v-recipe"] << 403 << {
        "kind": "Status", "message": "configmaps \"exp-r1v-recipe\" is forbidden: User \"bob\""}
    assert submit.main(["--release", "exp", "-n", "ns", "--no-follow"], configuration=cluster.configuration()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reading ConfigMap ns/exp-r1v-recipe: 403") and "forbidden" in err, err
    assert len(err.strip().splitlines()) == 1
    assert _writes(cluster) == [] and not list(cluster.emulator.objects)
    forbidding = FakeKubernetes()  # discovery itself refused
    try:
        forbidding.emulator["get /apis/"] << 403 << {"kind": "Status", "message": "forbidden: User \"bob\""}
        assert submit.main(["--release", "exp", "-n", "ns"], configuration=forbidding.configuration()) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: API server {forbidding.url}: 403") and len(err.strip().splitlines()) == 1, err
        assert _writes(forbidding) == []
    finally:
        forbidding.close()


def test_a_write_rbac_does_not_allow_refuses_the_submission_before_the_first_write(cluster, capsys):
    cluster.denied.add(("create", "roles"))  # a common gap: an identity that may not create RBAC
    assert submit.main(["--release", "exp", "-n", "ns", "--no-follow"], configuration=cluster.configuration()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this identity may not create roles.rbac.authorization.k8s.io in namespace ns") and \
        "nothing was changed" in err and len(err.strip().splitlines()) == 1, err
    assert _writes(cluster) == [] and not list(cluster.emulator.objects)
    cluster.denied.clear()
    cluster.denied.add(("patch", "configmaps"))  # a resubmission may update the recipe only where RBAC allows it
    assert submit.main(["--release", "exp", "-n", "ns", "--no-follow"], configuration=cluster.configuration()) == 0
    del cluster.emulator.objects[PYTORCHJOBS, "ns", "exp-r1v"]
    for job in ("exp-r1v-eval", "exp-r1v-eval-gate"):
        del cluster.emulator.objects[kmock.resource("batch", "v1", "jobs"), "ns", job]
    before = _snapshot(cluster)
    assert submit.main(["--release", "exp", "-n", "ns", "--no-follow"], configuration=cluster.configuration()) == 2
    assert "may not patch configmaps in namespace ns" in capsys.readouterr().err
    assert _snapshot(cluster) == before


def test_a_role_granting_what_the_submitter_lacks_is_refused_before_the_first_write(cluster, capsys):
    """RBAC's escalation check: the evaluation gate's Role grants patch on the evaluation Job, so a
    submitter who may create Roles but not patch Jobs would get a 403 midway; it is asked first."""
    cluster.denied.add(("patch", "jobs"))
    assert submit.main(["--release", "exp", "-n", "ns", "--no-follow"], configuration=cluster.configuration()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this identity may not patch jobs.batch exp-r1v-eval in namespace ns") and \
        "the chart's Role exp-r1v-eval grants it" in err and len(err.strip().splitlines()) == 1, err
    assert _writes(cluster) == [] and not list(cluster.emulator.objects)


def test_every_kind_any_ci_value_set_renders_is_one_r1v_submit_creates():
    from r1v_submit.cluster import ORDER, PLURALS

    for name, values in ci_value_sets().items():
        for extra in ({}, {"networkPolicy": {"enabled": True}, "dataPrep": {"enabled": True}}):
            try:
                objects = render({**values, **extra})
            except helm.HelmError:  # a value set made for one job kind only
                continue
            missing = {o["kind"] for o in objects} - set(PLURALS) - {"Pod"}  # the helm test's Pod is never submitted
            assert not missing, f"{name}: r1v_submit cannot create {missing}"
            assert set(PLURALS) == set(ORDER)


def test_no_kubeconfig_or_an_unreachable_server_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from tests.helpers import free_port

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert submit.main(["--release", "exp", "-n", "ns"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no kubeconfig") and len(err.strip().splitlines()) == 1, err
    assert submit.main(["--kubeconfig", str(tmp_path / "missing.yaml"), "-n", "ns"]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and len(err.strip().splitlines()) == 1, err
    port = free_port()
    (tmp_path / "kc").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    assert submit.main(["--kubeconfig", str(tmp_path / "kc"), "-n", "ns"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the API server at http://127.0.0.1:{port}") and \
        len(err.strip().splitlines()) == 1, err


def _quantities_as_text(obj):
    if isinstance(obj, dict):
        return {k: ({q: str(v) for q, v in val.items()} if k in ("requests", "limits") and isinstance(val, dict)
                    else _quantities_as_text(val)) for k, val in obj.items()}
    if isinstance(obj, list):
        return [_quantities_as_text(v) for v in obj]
    return obj


def _diff(a, b, path=""):
    """Paths where a and b differ (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b), key=str) for p in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_runs_from_the_built_wheel_outside_the_checkout(tmp_path):
    """The wheel carries the chart (links resolved): `python -m r1v_submit` works where there is no
    charts/ or recipes/ beside it, as in the image."""
    import subprocess
    import sys
    import zipfile

    from tests.chart.render import REPO

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True)
    if built.returncode != 0 and "setuptools" in built.stderr:
        pytest.skip(f"cannot build the wheel offline here (needs setuptools in the venv): {built.stderr[-200:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("r1v_k8s-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    recipe = (tmp_path / "site" / "r1v_submit" / "chart" / "files" / "recipe.yaml")
    assert not recipe.is_symlink()
    assert recipe.read_text() == (REPO / "recipes" / "r1v_qwen2vl_2b_clevr.yaml").read_text()
    run = subprocess.run([sys.executable, "-m", "r1v_submit", "--release", "exp", "--set", "jobKind=TrainJob",
                          "--dry-run"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    rendered = only(docs, "ConfigMap", "-recipe")["data"]["recipe.yaml"]
    # the seed, whole (a few lines "set below")
    assert all(line in rendered for line in recipe.read_text().splitlines())
    assert only(docs, "TrainJob")["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"


def test_namespace_defaults_to_the_kube_contexts(cluster, capsys, tmp_path):
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "team-b")
    assert submit.main(["--release", "exp", "--kubeconfig", str(kubeconfig), "--no-follow"],
                       configuration=cluster.configuration()) == 0
    assert (PYTORCHJOBS, "team-b", "exp-r1v") in cluster.emulator.objects
    assert "submitted PyTorchJob team-b/exp-r1v" in capsys.readouterr().out


# --- Helm's merging of -f, --set-json, --set, --set-string ----------------------------------------

SAME_FLAG = [  # several expressions of one flag: Helm parses them into one map, in order
    ("--set", ["trainer.extraArgs[0]=--max_steps", "trainer.extraArgs[1]=200"]),
    ("--set", ["trainer.extraEnv[0].name=FOO", "trainer.extraEnv[0].valueFrom.secretKeyRef.name=s"]),
    ("--set", ["a[2]=x", "a[0]=y", "a[1]=null"]),
    ("--set", ["l={a,b,c}", "l[1]=z", "l[4]=w"]),
    ("--set", ["x=1,y=2", "x=3", "y=null"]),
    ("--set", ["m.k\\.dot=1", "m.k\\.dot=2,m.o=true"]),
    ("--set", ["s=a\\,b", "t=c", "e="]),
    ("--set", ["a.b=1", "a=null"]),
    ("--set", ["a=null", "a.b=1"]),  # Helm refuses: a is no map
    ("--set-string", ["l[0]=1", "l[1]=true", "l[0]=null"]),
    ("--set-json", ['l=[1,{"a":2}]', 'l[1].b=3', 'm={"x":{}}', "m.x.y=null"]),
]


def _flags(flag, expressions):
    return {"--set": ("sets", expressions), "--set-string": ("set_strings", expressions),
            "--set-json": ("set_jsons", expressions)}[flag]


@pytest.mark.parametrize("flag, expressions", SAME_FLAG)
def test_repeated_flags_merge_as_helm_parses_them_into_one_map(flag, expressions):
    """Helm's own answer: its strvals parser (helm-python-sdk) on the expressions as one line, which
    is ParseInto of each in turn on one map."""
    from r1v_submit.chart import SubmitError, user_values

    parse = {"--set": helm.parse_set_string, "--set-string": helm.parse_set_string_values,
             "--set-json": helm.parse_set_json}[flag]
    try:
        want = parse(",".join(expressions))
    except helm.HelmError:
        with pytest.raises(SubmitError, match=flag):
            user_values(**dict([_flags(flag, expressions)]))
        return
    assert user_values(**dict([_flags(flag, expressions)])) == want


ACROSS_FLAGS = [  # (values file, --set-json, --set, --set-string) -> what Helm's install uses
    ("trainer:\n  extraArgs: [--max_steps, '100', --save_steps, '5']\n", [], ["trainer.extraArgs[1]=200"], [],
     {"trainer": {"extraArgs": ["--max_steps", 200, "--save_steps", "5"]}}),  # an index update of an -f list
    ("a:\n  b: {}\n  c: []\n  d: null\n", [], ["a.b.x=1"], [], {"a": {"b": {"x": 1}, "c": [], "d": None}}),
    ("", ['recipe.inline={"max_steps":50,"beta":0.04}'], ["recipe.inline.beta=0"], [],
     {"recipe": {"inline": {"max_steps": 50, "beta": 0}}}),
    ("", ["l=[1,2]"], [], ["l[0]=x"], {"l": ["x", 2]}),
    ("", ["x=2"], ["x=1"], [], {"x": 1}),  # --set after --set-json, whatever the command line's order
    ("x: [a, b, c]\n", [], ["x={d}"], [], {"x": ["d"]}),  # a list literal replaces the list
    ("sel:\n  nvidia.com/gpu.product: H100\n  'a=b,c[0]': '{x,y}'\n  back\\slash: 1.0e-6\n", [], ["sel.k=v"], [],
     {"sel": {"nvidia.com/gpu.product": "H100", "a=b,c[0]": "{x,y}", "back\\slash": 1e-06, "k": "v"}}),
    ("trainer:\n  tolerations: []\n", [], ["trainer.gpuProduct=X"], [],  # the empty list still drops the default
     {"trainer": {"tolerations": [], "gpuProduct": "X"}}),
    ("p:\n  a: {}\n", [], ["p.q=2"], [], {"p": {"a": {}, "q": 2}}),
    ("x:\n  - a: {}\n    n: 1\n", ['x=[{"q":1}]'], [], [], {"x": [{"q": 1}]}),  # replaced whole, nothing left over
    ("l: [{}, {c: 1}, []]\ne: {}\n", [], ["l[0].b=1"], [], {"l": [{"b": 1}, {"c": 1}, []], "e": {}}),
    ("env:\n  - name: A\n    value: a\n", [], ["env[0].value=b", "env[1].name=B"], ["env[1].value=2"],
     {"env": [{"name": "A", "value": "b"}, {"name": "B", "value": "2"}]}),
]


@pytest.mark.parametrize("values_file, set_jsons, sets, set_strings, want", ACROSS_FLAGS)
def test_flags_of_every_kind_merge_into_the_values_files_map_in_helms_order(tmp_path, values_file, set_jsons,
                                                                             sets, set_strings, want):
    from r1v_submit.chart import user_values

    files = []
    if values_file:
        (tmp_path / "v.yaml").write_text(values_file)
        files = [tmp_path / "v.yaml"]
    assert user_values(files, sets, set_strings, set_jsons) == want


def test_the_index_updates_helm_accepts_render_through_submit(capsys):
    got = dry_run(capsys, ["--set", "trainer.extraArgs[0]=--max_steps", "--set", "trainer.extraArgs[1]=200",
                           "--set", "trainer.extraEnv[0].name=FOO",
                           "--set", "trainer.extraEnv[0].valueFrom.secretKeyRef.name=s",
                           "--set", "trainer.extraEnv[0].valueFrom.secretKeyRef.key=k"])
    c = only(got, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c["args"][-2:] == ["--max_steps", "200"]
    assert {"name": "FOO", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in c["env"]


def test_a_bad_values_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "v.yaml").write_text("nodes: [1\n")
    assert submit.main(["-f", str(tmp_path / "v.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -f {tmp_path / 'v.yaml'}: ") and len(err.strip().splitlines()) == 1, err


def test_trainer_client_starts_a_run_on_the_charts_runtime():
    """Kubeflow SDK 0.5's TrainerClient.train on the chart's TrainingRuntime, the trainer block taken
    from the chart's own TrainJob (docs/operations.md, "TrainerClient"). The SDK does not install
    beside kubeflow-training (its regular `kubeflow` package hides `kubeflow.training`), so this runs
    only where it is importable (a scratch venv)."""
    pytest.importorskip("kubeflow.trainer", reason="kubeflow SDK 0.5 is not installed: it cannot share a venv "
                                                   "with kubeflow-training 1.9.4 (docs/operations.md)")
    from kubeflow.common.types import KubernetesBackendConfig
    from kubeflow.trainer import CustomTrainerContainer, TrainerClient
    from kubeflow.trainer.options import TrainerArgs, TrainerCommand

    from r1v_submit import chart

    objects = chart.objects(chart.render(chart.user_values(sets=["jobKind=TrainJob", "runName=exp-2"]),
                                         release="exp", namespace="r1v"))
    runtime = only(objects, "TrainingRuntime")
    want = only(objects, "TrainJob")["spec"]["trainer"]
    fake = FakeKubernetes()
    try:
        fake.emulator.objects[kmock.resource("trainer.kubeflow.org", "v1alpha1", "trainingruntimes"), "r1v",
                              "exp-r1v"] = {**runtime, "metadata": {**runtime["metadata"], "namespace": "r1v"}}
        client = TrainerClient(backend_config=KubernetesBackendConfig(namespace="r1v",
                                                                      client_configuration=fake.configuration()))
        requests = want["resourcesPerNode"]["requests"]
        name = client.train(runtime=client.get_runtime("exp-r1v"), trainer=CustomTrainerContainer(
            image=want["image"], num_nodes=want["numNodes"],
            resources_per_node={"gpu": requests["nvidia.com/gpu"], "cpu": requests["cpu"],
                                "memory": requests["memory"]},
            env={**{e["name"]: e["value"] for e in want["env"] if "value" in e}, "POD_NAMESPACE": "r1v"}),
            options=[TrainerCommand(command=want["command"]), TrainerArgs(args=want["args"])])
        got = dict(fake.emulator.objects[TRAINJOBS, "r1v", name].raw)["spec"]
    finally:
        fake.close()
    assert got["runtimeRef"]["name"] == "exp-r1v"
    assert [got["trainer"][k] for k in ("image", "command", "args", "numNodes")] == \
        [want[k] for k in ("image", "command", "args", "numNodes")]
    assert "/data/runs/exp-2" in got["trainer"]["args"]


def test_the_clusters_kubernetes_version_decides_what_renders(cluster, capsys):
    """.Capabilities.KubeVersion is the API server's, as for `helm install`: a TrainJob needs 1.31."""
    old = FakeKubernetes()
    try:
        old.emulator["get /version"] << {"major": "1", "minor": "29", "gitVersion": "v1.29.7"}
        old.emulator["get /apis/"] << {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        assert submit.main(["--release", "exp", "-n", "ns", "--set", "jobKind=TrainJob"],
                           configuration=old.configuration()) == 2
        err = capsys.readouterr().err
        assert "jobKind=TrainJob needs Kubernetes 1.31 or newer" in err and "v1.29.7" in err, err
        assert _writes(old) == []
    finally:
        old.close()
    assert submit.main(["--set", "jobKind=TrainJob", "--kube-version", "1.30.2", "--dry-run"]) == 2
    assert "this cluster is v1.30.2" in capsys.readouterr().err
    assert submit.main(["--kube-version", "1.26.0", "--dry-run"]) == 2
    assert "Kubernetes v1.26.0: this chart needs >=1.27.0-0" in capsys.readouterr().err
    dry_run(capsys, ["--set", "jobKind=TrainJob", "--kube-version", "1.31.0"])


def test_many_random_set_sequences_merge_as_helms_own_parser_does():
    """Seeded random sequences of --set / --set-string / --set-json expressions over nested maps, lists
    of maps, nulls and list literals: one expression at a time into the map so far equals Helm's
    parser on the whole sequence as one line (or both refuse it)."""
    import random

    from r1v_submit.chart import SubmitError, user_values

    rng = random.Random(19)
    paths = ["a", "a.b", "a.c", "l[0]", "l[1]", "l[2].n", "l[0].m", "m.k\\.dot", "m.x[1]", "e"]
    # No empty value: `--set k=` at the end of an expression (where each --set flag ends) and before
    # a comma parse differently, so one joined line is Helm's answer only for values that are not empty.
    values = {"--set": ["1", "x", "null", "true", "{p,q}", "a\\,b"],
              "--set-string": ["1", "x", "true"],
              "--set-json": ['{"z":1}', "[1,2]", "null", '"s"', "{}", "[]", "3"]}
    parsers = {"--set": helm.parse_set_string, "--set-string": helm.parse_set_string_values,
               "--set-json": helm.parse_set_json}
    compared = refused = 0
    for _ in range(300):
        flag = rng.choice(list(values))
        expressions = [f"{rng.choice(paths)}={rng.choice(values[flag])}" for _ in range(rng.randint(1, 5))]
        try:
            want = parsers[flag](",".join(expressions))
        except helm.HelmError:
            with pytest.raises(SubmitError):
                user_values(**dict([_flags(flag, expressions)]))
            refused += 1
            continue
        assert user_values(**dict([_flags(flag, expressions)])) == want, (flag, expressions)
        compared += 1
    assert compared > 150 and refused > 10  # both outcomes exercised
