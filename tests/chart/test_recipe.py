"""One recipe: what the chart's recipe ConfigMap holds is the file the trainer reads. recipe.inline
entries are merged onto the seed recipe key by key; the keys the chart owns (model, data set,
output folder, DeepSpeed config, metrics port and grace) come from chart values only, and a recipe
or extra argument that sets one of them otherwise fails the render naming both keys; a user's own
ConfigMap is checked by the trainer at start."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml

from r1v_job.preflight import UsageError, check_chart_keys
from tests.chart.render import CHART, container, only, render, replica_pods

SEED = yaml.safe_load((CHART / "files" / "recipe.yaml").read_text())
# recipe key -> (the chart value that owns it, a values dict setting that value to X, the value the chart then writes)
OWNED = {
    "model_name_or_path": ("model.path", {"model": {"path": "/data/models/Qwen2.5-VL-3B-Instruct"}},
                           "/data/models/Qwen2.5-VL-3B-Instruct"),
    "dataset_name": ("dataset.path", {"dataset": {"path": "/data/datasets/mine"}}, "/data/datasets/mine"),
    "output_dir": ("runName", {"runName": "exp7"}, "/data/runs/exp7"),
    "deepspeed": ("trainer.deepspeed", {"trainer": {"deepspeed": "zero3"}}, "/etc/r1v/zero3.json"),
    "metrics_port": ("monitoring.port", {"monitoring": {"port": 9100}}, 9100),
}


def _set(*expressions: str) -> dict:
    """Values as `helm install --set E1 --set E2` parses them (Helm's strvals, one map)."""
    return helm.parse_set_string(",".join(expressions))


def _trainer(objects: list[dict]) -> tuple[dict, dict, dict]:
    """(recipe file, --flag -> value of the trainer's args, env name -> value) of the master pod."""
    c = container(replica_pods(only(objects, "PyTorchJob"))["Master"], "pytorch")
    recipe = yaml.safe_load(only(objects, "ConfigMap", "-recipe")["data"].get("recipe.yaml", "{}"))
    args = c["args"]
    flags = {a[2:]: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    return recipe, flags, {e["name"]: e.get("value") for e in c["env"]}


def test_one_set_of_a_recipe_key_keeps_every_other_seed_value():
    recipe, flags, _ = _trainer(render(_set("recipe.inline.max_steps=200")))
    assert recipe["max_steps"] == 200
    assert recipe["beta"] == 0.04 and recipe["loss_type"] == "grpo" and recipe["use_bias_correction_kl"] is False
    assert recipe["gradient_checkpointing"] is False and recipe["num_generations"] == 8
    assert {k: v for k, v in recipe.items() if k != "max_steps"}.keys() >= set(SEED) - {"max_steps"}
    assert "max_steps" not in flags  # the recipe file alone carries it


def test_replace_makes_the_inline_recipe_the_whole_recipe():
    recipe, _, _ = _trainer(render({"recipe": {"inline": {"max_steps": 5, "beta": 0.0}, "replace": True}}))
    assert recipe.keys() == {"max_steps", "beta", "model_name_or_path", "dataset_name", "output_dir", "deepspeed",
                             "metrics_port", "metrics_grace_seconds"}


@pytest.mark.parametrize("key", sorted(OWNED))
def test_a_chart_owned_key_reaches_recipe_args_and_env_unchanged(key):
    chart_key, values, written = OWNED[key]
    recipe, flags, env = _trainer(render(values))
    assert recipe[key] == written and str(flags[key]) == str(written)
    assert json.loads(env["R1V_CHART_KEYS"])[key] == [chart_key, written]
    if key == "model_name_or_path":
        assert env["R1V_MODEL_PATH"] == written
    if key == "dataset_name":
        assert env["R1V_DATASET_PATH"] == written
    # The same value given in the recipe as well is accepted: it agrees.
    assert _trainer(render({**values, "recipe": {"inline": {key: written}}}))[0][key] == written


@pytest.mark.parametrize("key", sorted(OWNED))
def test_a_recipe_that_sets_a_chart_owned_key_otherwise_fails_naming_both(key):
    chart_key, _, _ = OWNED[key]
    other = 1234 if key == "metrics_port" else "/data/elsewhere"
    with pytest.raises(helm.HelmRenderError) as e:
        render({"recipe": {"inline": {key: other}}})
    assert f"recipe.inline.{key} conflicts with {chart_key}: set {chart_key}" in str(e.value)


def test_the_users_qwen25_recipe_never_trains_qwen2_silently():
    with pytest.raises(helm.HelmRenderError, match="recipe.inline.dataset_name conflicts with dataset.path: set "):
        render(helm.parse_set_json('recipe.inline={"model_name_or_path":"/data/models/Qwen2.5-VL-3B-Instruct",'
                                   '"dataset_name":"/data/datasets/mine","max_steps":50}'))


@pytest.mark.parametrize("arg", ["--model_name_or_path", "--deepspeed=/etc/r1v/zero3.json", "--output_dir"])
def test_extra_args_cannot_override_a_chart_owned_key(arg):
    with pytest.raises(helm.HelmRenderError, match=r"trainer.extraArgs --\w+.* conflicts with "):
        render({"trainer": {"extraArgs": [arg, "/data/x"]}})
    render({"trainer": {"extraArgs": ["--max_steps", "200"]}})  # any other recipe key is an override


def test_deepspeed_none_writes_null_and_passes_no_flag():
    recipe, flags, _ = _trainer(render({"trainer": {"deepspeed": "none"}}))
    assert recipe["deepspeed"] is None and "deepspeed" not in flags


def test_the_trainer_reads_the_rendered_recipe_as_the_seed_with_the_charts_keys(tmp_path):
    """Through the trainer's own parser: every field, its value and its type, as from the seed file."""
    from r1v_job.grpo import parse_args

    objects = render({"trainer": {"deepspeed": "none"}})
    recipe_text = only(objects, "ConfigMap", "-recipe")["data"]["recipe.yaml"]
    rendered, seed = tmp_path / "rendered.yaml", tmp_path / "seed.yaml"
    rendered.write_text(recipe_text)
    chart_keys = yaml.safe_load(recipe_text)
    seed.write_text(yaml.safe_dump({**SEED, **{k: chart_keys[k] for k in OWNED | {"metrics_grace_seconds": 0}}}))
    def fields(path):  # distributed_state: accelerate's object, no equality
        return [{k: (type(v), v) for k, v in vars(a).items() if k != "distributed_state"}
                for a in parse_args(["--config", str(path), "--use_cpu", "true"])]

    got, want = fields(rendered), fields(seed)
    assert got == want
    assert got[2]["model_name_or_path"][1] == "/data/models/Qwen2-VL-2B-Instruct" and got[1]["beta"] == (float, 0.04)


def test_the_seed_recipe_is_flat_one_key_a_line():
    """The chart comments out the seed's line of each key it sets: each key's value sits on its own line."""
    lines = [line for line in (CHART / "files" / "recipe.yaml").read_text().splitlines()
             if line and not line.startswith((" ", "#"))]
    assert {k: v for line in lines for k, v in yaml.safe_load(line).items()} == SEED


def test_the_rendered_recipe_keeps_the_seeds_comments_and_marks_what_it_replaced():
    text = only(render(_set("recipe.inline.max_steps=200")), "ConfigMap", "-recipe")["data"]["recipe.yaml"]
    assert "beta: 0.04                                       # trl 0.14 default" in text
    assert "# (set below) max_steps: -1" in text
    assert "# (set below) model_name_or_path: Qwen/Qwen2-VL-2B-Instruct" in text
    assert [line for line in text.splitlines() if line.startswith("max_steps:")] == ["max_steps: 200"]


def test_the_trainer_refuses_a_user_configmap_recipe_that_disagrees(tmp_path, monkeypatch):
    """recipe.existingConfigMap: unknown at render time, so the trainer checks it at start (exit 2 in
    `python -m r1v_job`, before any model loads), with the chart's keys from the pod's env."""
    _, _, env = _trainer(render({"recipe": {"existingConfigMap": "mine"}}))
    copied_seed = dict(SEED)  # a user who copied recipes/r1v_qwen2vl_2b_clevr.yaml into a ConfigMap
    with pytest.raises(UsageError) as e:
        check_chart_keys("/etc/r1v/recipe.yaml", copied_seed, env)
    assert "dataset_name 'leonardPKU/clevr_cogen_a_train' conflicts with the chart's dataset.path" in str(e.value)
    without = {k: v for k, v in SEED.items() if k not in ("model_name_or_path", "dataset_name", "output_dir",
                                                          "deepspeed", "metrics_port")}
    check_chart_keys("/etc/r1v/recipe.yaml", without, env)  # leaves them to the chart: accepted
    check_chart_keys("/etc/r1v/recipe.yaml", {**without, "metrics_port": 8000.0}, env)  # same number
    with pytest.raises(UsageError,
                       match="model_name_or_path '/data/models/other' conflicts with the chart's model.path"):
        check_chart_keys("/etc/r1v/recipe.yaml", {**without, "model_name_or_path": "/data/models/other"}, env)
    # Wired into the trainer's argument parsing:
    from r1v_job.grpo import parse_args

    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**without, "model_name_or_path": "/data/models/other"}))
    monkeypatch.setenv("R1V_CHART_KEYS", env["R1V_CHART_KEYS"])
    with pytest.raises(UsageError, match="conflicts with the chart's model.path"):
        parse_args(["--config", str(tmp_path / "r.yaml")])
