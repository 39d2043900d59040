"""The chart renders, lints and validates for the defaults and every ci/ value set."""

from __future__ import annotations

import copy

import helm_python as helm
import pytest

from tests.chart.render import (CHART, admission_problems, builtin_problems, ci_value_sets, crd_problems,
                                           custom_problems, kinds, kubernetes_validate_problems, only, render)

VALUE_SETS = {"defaults": {}, **ci_value_sets()}


def test_ci_value_sets_cover_the_required_shapes():
    # The shapes the chart supports, one value set each; a rename must not silently drop one from the matrix.
    assert {"one-node", "four-nodes", "existing-claim", "monitoring-off", "data-prep",
            "gang-scheduling", "trainjob", "trainjob-cluster-runtime", "kueue", "kueue-trainjob",
            "extension-points"} <= set(VALUE_SETS)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_renders_and_builtin_objects_validate(name):
    objects = render(VALUE_SETS[name])
    assert VALUE_SETS[name].get("jobKind", "PyTorchJob") in kinds(objects)
    assert builtin_problems(objects) == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_custom_resources_validate_against_their_crds(name):
    objects = render(VALUE_SETS[name])
    assert custom_problems(objects) == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_has_no_errors_or_warnings(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], namespace="r1v")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and serious == [], report


def test_lint_strict_passes_with_defaults():
    report = helm.lint(str(CHART), strict=True)
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report


# --- the validators themselves must be able to fail ------------------------------------------------

def _job():
    return copy.deepcopy(only(render({"nodes": 2}), "PyTorchJob"))


def test_crd_check_rejects_a_field_the_crd_does_not_declare():
    job = _job()
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["gpus"] = 8
    job["spec"]["runPolicy"]["ttlAfterFinished"] = 5
    problems = crd_problems(job)
    assert any("containers[0].gpus" in p for p in problems), problems
    assert any("runPolicy.ttlAfterFinished" in p for p in problems), problems


def test_crd_check_rejects_wrong_types():
    job = _job()
    job["spec"]["nprocPerNode"] = 8  # an int: the CRD wants a string
    assert any("nprocPerNode" in p for p in crd_problems(job))


def test_crd_check_covers_the_monitor_kinds():
    monitor = copy.deepcopy(only(render({}), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    assert any("honourLabels" in p for p in crd_problems(monitor))


@pytest.mark.parametrize("mutate, expected", [
    (lambda j: j["spec"]["pytorchReplicaSpecs"].__setitem__("Chief", j["spec"]["pytorchReplicaSpecs"]["Worker"]),
     "Master or Worker"),
    (lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].__setitem__("replicas", 2), "must be 1"),
    (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].__setitem__("replicas", 0), "at least 1"),
    (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
     .__setitem__("name", "trainer"),
     "named pytorch"),
    (lambda j: j["metadata"].__setitem__("name", "1run"), "DNS-1035"),
])
def test_admission_check_catches_what_the_operator_rejects(mutate, expected):
    job = _job()
    mutate(job)
    assert any(expected in p for p in admission_problems(job))


def test_kubernetes_validate_layer_fails_on_unknown_fields_and_unknown_kinds():
    service = copy.deepcopy(only(render({}), "Service"))
    service["spec"]["selectr"] = {}
    assert kubernetes_validate_problems([service])
    bogus = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert any(p.startswith("WARN") for p in kubernetes_validate_problems([bogus]))


def test_packaged_chart_carries_the_recipe_behind_its_symlinks(tmp_path):
    # files/recipe.yaml and files/zero*.json link to ../../../recipes/; `helm package` (and so a
    # chart pushed to a registry) must hold their contents, not dangling links.
    archive = helm.package(str(CHART), destination=str(tmp_path))
    with helm.Chart.load(archive) as packaged:
        files = {f["name"]: f["data"] for f in packaged.files}
        rendered = packaged.render({}, name="r1v", namespace="r1v")
    recipes = CHART.parents[1] / "recipes"
    assert (CHART / "files" / "recipe.yaml").is_symlink()
    for name, source in {"files/recipe.yaml": "r1v_qwen2vl_2b_clevr.yaml", "files/zero2.json": "zero2.json",
                         "files/zero3.json": "zero3.json"}.items():
        assert files[name] == (recipes / source).read_text()
    assert "num_generations: 8" in rendered["r1v/templates/configmap-recipe.yaml"]
    assert "use_bias_correction_kl: false" in rendered["r1v/templates/configmap-recipe.yaml"]

