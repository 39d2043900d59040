"""Recipes parse with TrlParser, set what R1-V set, and give R1-V's batch on 8 GPUs."""

import copy

import pytest

from r1v_job.config import step_batch
from r1v_job.grpo import parse_args
from r1v_job.preflight import UsageError

SEED = "recipes/r1v_qwen2vl_2b_clevr.yaml"


def _seed(*overrides):
    # No GPU here: bf16 needs use_cpu to parse on a CPU-only machine.
    return parse_args(["--config", SEED, "--use_cpu", "true", *overrides])


def test_seed_recipe_sets_r1v_hyperparameters_explicitly():
    script, train, model = _seed()
    assert model.model_name_or_path == "Qwen/Qwen2-VL-2B-Instruct" and model.dtype == "bfloat16"
    assert (train.learning_rate, train.beta, train.temperature) == (1e-6, 0.04, 1.0)
    assert (train.loss_type, train.scale_rewards, train.num_iterations) == ("grpo", "group", 1)
    assert train.num_generations == 8 and train.max_completion_length == 256
    assert train.gradient_checkpointing is False and train.bf16 is True
    assert train.lr_scheduler_type == "linear" and train.warmup_steps == 0
    assert train.deepspeed == "recipes/zero2.json" and train.max_steps == 100
    assert script.reward_funcs == ["accuracy_reward", "format_reward"]
    assert (script.min_pixels, script.max_pixels) == (3136, 401408)


def test_seed_recipe_gives_r1v_batch_on_one_node_and_scales_with_nodes():
    _, train, _ = _seed()
    assert step_batch(train, world_size=8) == (16, 128)  # R1-V: 16 prompts x 8 rollouts
    assert step_batch(train, world_size=16) == (32, 256)  # 2 nodes
    assert step_batch(train, world_size=32) == (64, 512)  # 4 nodes
    # R1-V's own split (8 completions x 2 accumulation steps) is the same batch.
    _, r1v, _ = _seed("--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
                      "--steps_per_generation", "2")
    assert step_batch(r1v, world_size=8) == (16, 128)
    # The recipe's comment: how to keep 128 rollouts per step on 2 and 4 nodes.
    _, two, _ = _seed("--per_device_train_batch_size", "8")
    assert step_batch(two, world_size=16) == (16, 128)
    # (4 completions per device only parses with >= 2 processes: TRL checks whole groups per batch.)
    four = copy.copy(two)
    four.per_device_train_batch_size = 4
    assert step_batch(four, world_size=32) == (16, 128)
    assert (four.per_device_train_batch_size * 32) % four.num_generations == 0


def test_smoke_recipe_is_offline():
    script, train, model = parse_args(["--config", "recipes/smoke_cpu.yaml"])
    assert script.offline_bootstrap and model.model_name_or_path.startswith("runs/")
    assert train.use_cpu and not train.bf16 and train.beta == 0.04 and train.loss_type == "grpo"


def test_command_line_overrides_the_recipe():
    _, train, model = _seed("--learning_rate", "3e-6", "--model_name_or_path", "Qwen/Qwen2.5-VL-3B-Instruct")
    assert train.learning_rate == 3e-6 and model.model_name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_unknown_recipe_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nbf16: false\nlearning_rat: 1e-6\n")
    with pytest.raises(UsageError, match=r"bad.yaml: unknown key\(s\) \['learning_rat'\]"):
        parse_args(["--config", str(bad)])
