"""Values are data: no value can add a field to an object, drop part of itself, or make two releases
share an object; render-time checks of what a schema cannot say (paths on the shared volume, GPU
counts set twice, Prometheus durations)."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from tests.chart.render import CHART, notes, only, render, render_raw

# Everything on that renders a string value somewhere: data prep, gang scheduling, a created
# ServiceAccount, the dashboard, the helm test.
ALL_ON = {"dataPrep": {"enabled": True, "hfTokenSecret": {"name": "hf"}},
          "gangScheduling": {"enabled": True, "schedulerName": "volcano", "queue": "q", "priorityClass": "p"},
          "trainer": {"serviceAccount": {"create": True}},
          "monitoring": {"dashboard": {"enabled": True}}, "kueue": {"queueName": "research"},
          "networkPolicy": {"enabled": True}, "evaluator": {"pushgatewayUrl": "http://gw:9091",
                                                            "repush": {"schedule": "0 * * * *"}}}
HOSTILE = "my model #v2: x\nhostIPC: true\n- '\" {a}"
# Where a value must stay a path on the volume or a URL, the hostile part follows a valid prefix.
PREFIX = {"model.path": "/data/models/", "dataset.path": "/data/datasets/", "superclevr.dir": "/data/sc/",
          "superclevr.questionsUrl": "https://example.com/", "superclevr.imagesUrl": "https://example.com/",
          "evaluator.pushgatewayUrl": "http://gw/"}
SUFFIX = {"superclevr.questionsUrl": ".jsonl", "superclevr.imagesUrl": ".zip"}
# Free-form entries of maps and lists (empty by default, so not found by walking values.yaml).
EXTRA = ["trainer.env.FOO", "trainer.nccl.NCCL_SOCKET_IFNAME", "trainer.podLabels.team",
         "trainer.podAnnotations.note", "commonLabels.team", "recipe.inline.report_to",
         "monitoring.rules.alertLabels.team", "monitoring.dashboard.annotations.grafana_folder"]


def _string_values(tree: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _string_values(value, path + ".")
        elif isinstance(value, str):
            found.append(path)
    return found


STRING_VALUES = sorted(set(_string_values(yaml.safe_load((CHART / "values.yaml").read_text()))) | set(EXTRA))


def _with(values: dict, dotted: str, value) -> dict:
    out = yaml.safe_load(yaml.safe_dump(values))
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _shape(node, path="") -> set[str]:
    """Every key path in an object (list items by index), ConfigMap recipes parsed as YAML too."""
    if isinstance(node, dict):
        return {f"{path}.{k}" for k in node} | {p for k, v in node.items() for p in _shape(v, f"{path}.{k}")}
    if isinstance(node, list):
        return {p for i, v in enumerate(node) for p in _shape(v, f"{path}[{i}]")}
    return set()


def _leaves(node) -> list:
    if isinstance(node, dict):
        return [x for v in node.values() for x in _leaves(v)]
    if isinstance(node, list):
        return [x for v in node for x in _leaves(v)]
    return [node]


def _rendered(values: dict) -> list[dict]:
    objects = render(values)
    for o in objects:  # the recipe file is data too: its keys must not change either
        if o["kind"] == "ConfigMap" and "recipe.yaml" in (o.get("data") or {}):
            o["data"]["recipe.yaml"] = yaml.safe_load(o["data"]["recipe.yaml"])
    return objects


def test_every_string_value_is_covered():
    named = {"trainer.priorityClassName", "trainer.runtimeClassName", "gangScheduling.schedulerName",
             "evaluator.priorityClassName", "image.evaluator.tag", "dataset.id", "dataPrep.hfTokenSecret.name",
             "model.path", "model.id"}
    assert named <= set(STRING_VALUES)


@pytest.mark.parametrize("key", STRING_VALUES)
def test_a_hostile_string_is_refused_or_round_trips_and_adds_no_field(key):
    plain, hostile = (PREFIX.get(key, "") + v + SUFFIX.get(key, "") for v in ("plain", HOSTILE))
    base = _with(ALL_ON, "recipe.existingConfigMap", "mine") if key == "recipe.existingConfigMapKey" else ALL_ON
    try:
        got = _rendered(_with(base, key, hostile))
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        # Refused (a schema pattern, a name check): one message naming the value.
        assert key.split(".")[-1] in str(e) or "name" in str(e), str(e)
        return
    want = _rendered(_with(base, key, plain))
    assert [_shape(o) for o in got] == [_shape(o) for o in want]
    assert any(isinstance(v, str) and hostile in v for o in got for v in _leaves(o)), f"{key} lost part of its value"


def test_the_values_named_in_bug_reports_now_render_quoted_and_intact():
    for key in ("trainer.priorityClassName", "trainer.runtimeClassName", "evaluator.priorityClassName",
                "gangScheduling.schedulerName", "image.evaluator.tag", "dataset.id", "model.id"):
        got = _rendered(_with(ALL_ON, key, HOSTILE))
        pods = [o for o in got if o["kind"] in ("PyTorchJob", "Job")]
        assert not any("hostIPC" in str(_shape(o)) for o in pods), key
    path = "/data/models/my model #v2"
    job = only(render({"model": {"path": path}}), "PyTorchJob")
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model_name_or_path") + 1] == path


# --- names ---------------------------------------------------------------------------------------

def _names(objects: list[dict]) -> set[str]:
    return {o["metadata"]["name"] for o in objects}


def test_long_release_names_differing_at_the_end_share_no_object_and_no_output_folder():
    a = "team-vision-qwen2vl-clevr-ablation-lr-sweep-run-00001"
    b = "team-vision-qwen2vl-clevr-ablation-lr-sweep-run-00002"
    assert len(a) == 53  # Helm's longest release name
    every_object = {"evaluator": {"pushgatewayUrl": "http://gw:9091", "repush": {"schedule": "0 * * * *"}},
                    "networkPolicy": {"enabled": True}, "dataPrep": {"enabled": True}}
    first, second = render(every_object, name=a), render(every_object, name=b)
    assert not _names(first) & _names(second)
    assert len(only(first, "CronJob")["metadata"]["name"]) <= 52  # its Jobs add "-" and 10 digits
    assert len(only(first, "PyTorchJob")["metadata"]["name"]) <= 48  # + "-worker-127" stays a DNS-1035 label
    assert all(len(n) <= 63 for n in _names(first) | _names(second))

    def output(objects):
        c = only(objects, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        return c["args"][c["args"].index("--output_dir") + 1]

    assert output(first) != output(second)
    assert (only(first, "PersistentVolumeClaim")["metadata"]["name"]
            != only(second, "PersistentVolumeClaim")["metadata"]["name"])
    assert _names(render(every_object, name=a)) == _names(first)  # stable: the same release keeps its names
    assert only(render({}, name="exp"), "PyTorchJob")["metadata"]["name"] == "exp-r1v"  # short names unchanged


# --- render-time checks ------------------------------------------------------------------------

@pytest.mark.parametrize("key, path", [("model.path", "/models/qwen"), ("dataset.path", "/data/../etc/x"),
                                       ("superclevr.dir", "/tmp/sc")])
def test_a_path_outside_the_shared_volume_fails_the_render(key, path):
    with pytest.raises(helm.HelmRenderError, match=f'{key} "{path}" is outside the shared volume'):
        render(_with({}, key, path))
    render(_with({}, key, "/data/elsewhere/x"))


@pytest.mark.parametrize("part", ["requests", "limits"])
def test_a_gpu_count_in_resources_must_match_gpus_per_node(part):
    with pytest.raises(helm.HelmRenderError,
                       match=f"trainer.resources.{part}.nvidia.com/gpu=4 disagrees with gpusPerNode=8"):
        render({"trainer": {"resources": {part: {"nvidia.com/gpu": 4}}}})
    text = render_raw({"gpusPerNode": 4, "trainer": {"resources": {part: {"nvidia.com/gpu": 4}}}})
    job = text["r1v/templates/pytorchjob.yaml"]
    assert job.count("nvidia.com/gpu:") == 2  # requests and limits once each: no duplicate key


def test_notes_warn_when_the_claim_falls_to_the_default_storage_class():
    assert "WARNING: storage.storageClassName is empty" in notes({})
    assert "storageClassName is empty" not in notes({"storage": {"storageClassName": "nfs"}})
    assert "storageClassName is empty" not in notes({"storage": {"existingClaim": "mine"}})


@pytest.mark.parametrize("duration, seconds", [("1h30m", 5400), ("1d", 86400), ("1w", 604800), ("90s", 90),
                                               ("1500ms", 2), ("2h", 7200)])
def test_durations_accept_what_prometheus_accepts(duration, seconds):
    rule = only(render({"monitoring": {"rules": {"stalled": {"after": duration}}}}), "PrometheusRule")
    stalled = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "R1VTrainingStalled")
    assert f"> {seconds})" in stalled["expr"]


@pytest.mark.parametrize("duration", ["1.5h", "h", "", "30m1h", "1 h"])
def test_durations_prometheus_refuses_are_refused(duration):
    with pytest.raises(helm.HelmValuesError, match="after"):
        render({"monitoring": {"rules": {"stalled": {"after": duration}}}})


def test_compound_durations_give_rules_prometheus_loads(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian's prometheus package)")
    rule = only(render({"monitoring": {"interval": "1m30s", "rules": {
        "stalled": {"after": "1h30m"}, "restarts": {"window": "1d"}, "scoresMissing": {"after": "1w"}}}}),
        "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[1d]" in yaml.safe_dump(rule["spec"]).replace("\n", " ")
