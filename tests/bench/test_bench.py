"""The benchmark harness: variant arithmetic, the 2B config, and one real measured step on the tiny model.

No timing thresholds: a shared CI machine makes any speed assertion flaky. The figures' meaning
(pinned completion lengths, one generate call against one per prompt) is what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.harness import (LEVERS, MasterWeightAdamW, Variant, needed_flops, parameter_split, step_flops,
                           vision_forward_flops)
from bench.models import CONFIG_2B, prepare_model, random_model_config
from r1v_job.tiny import build_tokenizer


def test_variant_batch_arithmetic():
    # R1-V: one prompt's 8 rollouts per micro-step, a generation round in each of the 16 micro-steps.
    assert Variant.parse("r1v").batch_fields(16, 8) == {
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 16, "steps_per_generation": 1,
        "generation_batch_size": None}
    # Ours: the same micro-batches, but one generation round for the whole step.
    assert Variant.parse("ours").batch_fields(16, 8)["steps_per_generation"] == 16
    big = Variant.parse("ours:mb=32,gc,rounds=2,warmup=0,beta=0.0")
    assert big.batch_fields(16, 8) == {"per_device_train_batch_size": 32, "gradient_accumulation_steps": 4,
                                       "steps_per_generation": 2, "generation_batch_size": None}
    assert big.overrides == {"gradient_checkpointing": True, "beta": 0.0} and big.warmup == 0
    with pytest.raises(ValueError):
        Variant.parse("ours:mb=48").batch_fields(16, 8)  # 128 rollouts do not split into 48s
    with pytest.raises(ValueError):
        Variant.parse("r1v:mb=32")
    with pytest.raises(ValueError):
        Variant.parse("fast")


def test_levers_switch_the_recipe_fields_on_and_the_rest_off():
    assert Variant.parse("ours:levers=dedup+group").overrides == {
        "dedup_vision": True, "group_micro_batches": True, "process_images_once": False, "compile_generation": False,
        "send_images_once": False, "rope_index_once": False}
    assert set(Variant.parse("ours:levers=all").overrides.values()) == {True}
    assert set(Variant.parse("r1v:levers=none").overrides.values()) == {False}
    assert Variant.parse("ours").overrides == {}  # the recipe's defaults
    with pytest.raises(ValueError, match="unknown lever"):
        Variant.parse("ours:levers=dedup+fast")
    assert Variant.parse("ours:precision=fp32-autocast").precision == "fp32-autocast"
    with pytest.raises(ValueError, match="precision"):
        Variant.parse("ours:precision=fp16")


def test_lever_fields_exist_in_the_recipe_arguments():
    from dataclasses import fields

    from r1v_job.config import R1VScriptArguments

    assert set(LEVERS.values()) <= {f.name for f in fields(R1VScriptArguments)}


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_vision_flop_formula_matches_torchs_flop_counter(tmp_path, arch):
    """The merger on merged tokens, attention within each image (Qwen2.5-VL: within windows) - checked
    against torch's own count of the tower's matmuls and convolutions (eager attention, so the score
    and weighted-sum matmuls are counted too)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForImageTextToText

    from r1v_job.tiny import save_tiny_model

    model = AutoModelForImageTextToText.from_pretrained(save_tiny_model(tmp_path / arch, arch=arch),
                                                        attn_implementation="eager")
    params = parameter_split(model)
    grid = torch.tensor([[1, 8, 8], [1, 8, 12], [1, 16, 16]])
    patches = grid.prod(-1).tolist()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.model.visual(torch.randn(sum(patches), 1176), grid_thw=grid)
    counted = counter.get_total_flops()
    assert vision_forward_flops(patches, params) == pytest.approx(counted, rel=0.02)
    # The earlier formula (every vision weight once per patch, no attention) was off by more.
    assert 2 * params["vision"] * sum(patches) != pytest.approx(counted, rel=0.02)


def test_2b_config_has_the_real_sizes_and_the_tokenizers_ids():
    import torch
    from transformers import AutoModelForImageTextToText

    tokenizer = build_tokenizer()
    config = random_model_config(CONFIG_2B, tokenizer)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (1536, 28, 12, 2, 8960, 151936)
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.mlp_ratio, vision.hidden_size,
            vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (32, 1280, 16, 4, 1536,
                                                                                          14, 2, 2)
    assert config.tie_word_embeddings
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    with torch.device("meta"):  # sizes without allocating 2B parameters
        model = AutoModelForImageTextToText.from_config(config)
    assert 2.20e9 < sum(p.numel() for p in model.parameters()) < 2.22e9  # Qwen2-VL-2B: 2.21B


def test_random_model_from_a_config_json(tmp_path):
    """The config-JSON path bench/gpu.sh takes, on a shrunken copy of the 2B config."""
    from transformers import AutoConfig, AutoProcessor

    config = json.loads(CONFIG_2B.read_text())
    config.update(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    config["rope_scaling"]["mrope_section"] = [2, 3, 3]
    config["vision_config"].update(depth=2, embed_dim=32, num_heads=2, hidden_size=64)
    small = tmp_path / "small.json"
    small.write_text(json.dumps(config))
    model_dir = prepare_model(str(small), tmp_path)
    loaded = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
    assert loaded.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert loaded.text_config.eos_token_id == tokenizer.eos_token_id


@pytest.mark.slow
def test_harness_measures_one_step_of_each_style(tmp_path, tiny_model_dir):
    from bench.__main__ import main

    out = tmp_path / "bench.json"
    main(["--model", str(tiny_model_dir), "--recipe", "recipes/smoke_cpu.yaml", "--image-size", "112x112",
          "--prompts", "2",
          "--generations", "2", "--completion-length", "4", "--steps", "1", "--warmup", "0",
          "--variants", "ours", "r1v", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["rollouts_per_step"] == 4 and report["baseline"] == "r1v"
    by_name = {result["variant"]: result for result in report["results"]}
    for name, calls in (("ours", 1), ("r1v", 2)):
        result = by_name[name]
        assert "error" not in result, result.get("error")
        summary = result["summary"]
        assert summary["generate_calls"] == calls  # one batched call against one per prompt
        assert summary["rollouts"] == 4
        assert summary["completion_tokens"] == 4 * 4  # min_new_tokens pins every completion's length
        # Vision dedup is on (the default): each prompt's image is encoded once per pass. Per step:
        # generation 2 (r1v: one call per prompt, 1 each), reference 2 and policy 2 (ours: 2 rollouts
        # of one prompt per micro-batch of 2; r1v: 1 prompt per micro-step).
        assert summary["vision_images"] == 6
        for key in ("step_s", "cpu_s", "generation", "ref_logps", "policy_forward", "backward", "optimizer",
                    "rollouts_per_s", "generated_tokens_per_s", "generation_tokens_per_s", "tflop_per_step"):
            assert summary[key] > 0, key
        assert result["peak_memory_bytes"] > 0 and result["speedup"] > 0
        assert len(result["steps"]) == 1


def test_master_weights_follow_fp32_adamw_while_the_model_computes_in_bf16():
    """precision=bf16: the update an fp32 AdamW makes at lr 1e-6, which bf16 weights alone would round
    away, lands in the fp32 masters bit for bit, and the bf16 weights are the masters rounded."""
    import torch

    torch.manual_seed(0)
    start = torch.randn(64) + 4.0  # |w| ~ 4: bf16 steps of 2^-5 there, far above 1e-6
    reference = torch.nn.Parameter(start.clone())
    plain = torch.optim.AdamW([reference], lr=1e-6)
    weights = torch.nn.Parameter(start.to(torch.bfloat16))
    optimizer = MasterWeightAdamW([{"params": [weights]}], masters={id(weights): start.clone()}, lr=1e-6)
    for _ in range(5):
        gradient = torch.randn(64).to(torch.bfloat16).float()  # bf16-exact: both optimizers see the same
        reference.grad, weights.grad = gradient.clone(), gradient.to(torch.bfloat16)
        plain.step()
        optimizer.step()
    master = optimizer.pairs[0][1]
    # The same gradients give the same fp32 trajectory, which moved ...
    assert torch.equal(master, reference.detach()) and not torch.equal(master, start)
    assert torch.equal(weights.detach(), master.to(torch.bfloat16))
    # ... while plain AdamW on the bf16 weights themselves would not have moved them at all.
    bf16_only = torch.nn.Parameter(start.to(torch.bfloat16))
    alone = torch.optim.AdamW([bf16_only], lr=1e-6)
    bf16_only.grad = torch.ones(64, dtype=torch.bfloat16)
    alone.step()
    assert torch.equal(bf16_only.detach(), start.to(torch.bfloat16))


def test_mfu_counts_each_prompts_image_once_per_pass_and_no_recomputation():
    params = {"decoder": 1000, "lm_head": 100, "text_layers": 2, "text_attention_dim": 8}
    step = {"prompt_tokens": 40, "completion_tokens": 8, "sequence_tokens_squared": 200,
            "needed_vision_forward": 50.0,  # each prompt's image once, one forward
            "vision_flops": 8 * 50.0 * (1 + 1 + 3), "vision_grad_forward": 8 * 50.0}  # 8 copies a pass
    language = 2 * (1000 * 48 + 100 * 8) + 2 * 2 * 8 * 200
    assert needed_flops(step, params, passes=5) == 5 * (language + 50.0)
    assert step_flops(step, params, passes=5) == 5 * language + 8 * 50.0 * 5
    # Gradient checkpointing runs the policy forward again: executed, not needed.
    assert step_flops(step, params, passes=5, recompute=True) == 6 * language + 8 * 50.0 * 6


def test_gpu_script_dry_run_runs_the_whole_plan_on_the_tiny_model_and_prints_every_column(tmp_path):
    """`bash bench/gpu.sh --dry-run`: the plan for an H100's free memory, every variant one step on the
    tiny model on the CPU, the compact table, and the JSON carrying the commit it was given."""
    import os
    import subprocess
    import sys

    from bench.__main__ import COMPACT
    from bench.gpu_plan import plan

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(root), "OUT": str(tmp_path / "out"),
           "WORKDIR": str(tmp_path / "work")}
    done = subprocess.run(["bash", "bench/gpu.sh", "--dry-run", "--commit", "c0ffee1"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "bench_qwen2vl_2b.json").read_text())
    assert report["commit"] == "c0ffee1"
    expected = plan(79.2, rollouts=16, generations=8, quick=True)
    ran = {r["variant"]: r for r in report["results"] if "skipped" not in r}
    assert list(ran) == expected.variants and len(ran) >= 10
    assert [r["variant"] for r in report["results"] if "skipped" in r] == [spec for spec, _ in expected.skipped]
    for spec, result in ran.items():
        assert "error" not in result, (spec, result.get("error"))
        # The precision the row names is what the model computed in: bf16 weights (fp32 masters).
        weights = "bfloat16" if "precision=bf16" in spec else "float32"
        assert weights in result["peak_source"], spec
        assert result["settings"]["master_weights"] == ("fp32" if weights == "bfloat16" else None)
    # The variants differ where they should: dedup + group encode each prompt's image once per pass
    # (2 prompts: generation 2, reference 2, policy 2); TRL as before encodes every rollout's copy.
    assert ran[expected.variants[0]]["summary"]["vision_images"] == 6
    assert ran[expected.before]["summary"]["vision_images"] == 3 * 16
    assert ran[expected.before]["summary"]["mfu"] < ran[expected.before]["summary"]["executed_utilization"]
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(COMPACT) + " |"
    rows = {line.split(" | ")[0].removeprefix("| "): line.strip("|").split("|") for line in table[2:]}
    for spec in expected.variants:
        cells = [cell.strip() for cell in rows[spec]]
        assert len(cells) == len(COMPACT) and "-" not in cells and all(cells), (spec, cells)
    assert all("not run: needs" in "".join(rows[spec]) for spec, _ in expected.skipped)
