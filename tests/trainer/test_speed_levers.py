"""The speed levers inside real GRPO steps of the tiny Qwen2-VL: each changes what the
vision tower and the image processor receive, never the completions, the loss or the gradient.

One optimizer step per run: 4 prompts x 4 rollouts, two micro-batches of 8, beta 0.04 (so the
reference model runs too), sampled completions, a reward that varies within groups.
"""

from __future__ import annotations

import hashlib

import datasets
import pytest
import torch
from transformers import TrainerCallback

from r1v_job import rewards
from r1v_job.grpo import build_trainer, parse_args

GROUP = 4


def _length_reward(completions, **kwargs):
    # Varies within each group, so advantages, loss and gradients are not zero.
    return [len(rewards.completion_text(c)) % 5 / 4 for c in completions]


_length_reward.__name__ = "length_reward"


def _digest(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.detach().float().contiguous().numpy().tobytes()).hexdigest()


class Recorder(TrainerCallback):
    """What one step's parts received: the vision towers' images per call, the image processor's images,
    the micro-batches' prompts, the completions, the gradient before the optimizer step."""

    def __init__(self, trainer):
        self.tower_calls, self.processed, self.micro_batches, self.completions = [], 0, [], []
        self.gradient, self.forward_pixels, self.logps = None, [], {"policy": [], "reference": []}
        for name, model in (("policy", trainer.model), ("reference", trainer.ref_model)):
            model.model.visual.register_forward_pre_hook(self._tower(name), with_kwargs=True)
        self.rope_calls = []  # (input rows, positions) of every get_rope_index call, all passes
        for model in (trainer.model, trainer.ref_model):
            inner = model.model
            rope = inner.get_rope_index

            def recording_rope(*args, _rope=rope, **kwargs):
                positions, deltas = _rope(*args, **kwargs)
                self.rope_calls.append((positions.clone(), deltas.clone()))
                return positions, deltas

            inner.get_rope_index = recording_rope
        self.caches = set()  # KV-cache types the policy's forward was given (generation only)
        trainer.model.register_forward_pre_hook(
            lambda module, args, kwargs: self.caches.add(type(kwargs["cache"]).__name__) if kwargs.get("cache")
            is not None else None, with_kwargs=True)
        image_processor = trainer.processing_class.image_processor
        preprocess = image_processor.preprocess

        def counting_preprocess(images, *args, **kwargs):
            self.processed += len(images) if isinstance(images, list) else 1
            return preprocess(images, *args, **kwargs)

        image_processor.preprocess = counting_preprocess
        generate = trainer._generate_single_turn

        def recording_generate(*args, **kwargs):
            completion_ids, logprobs = generate(*args, **kwargs)
            self.completions.extend(list(ids) for ids in completion_ids)
            return completion_ids, logprobs

        trainer._generate_single_turn = recording_generate
        score = trainer._generate_and_score_completions

        def recording_score(inputs):
            batch = score(inputs)
            self.forward_pixels.append(batch["pixel_values"].clone())
            return batch

        trainer._generate_and_score_completions = recording_score
        compute_loss = trainer.compute_loss

        def recording_loss(model, inputs, *args, **kwargs):
            # Rollouts by their image (all prompts' text is the same question).
            chunks = torch.split(inputs["pixel_values"], inputs["image_grid_thw"].prod(-1).tolist())
            self.micro_batches.append([_digest(c) for c in chunks])
            return compute_loss(model, inputs, *args, **kwargs)

        trainer.compute_loss = recording_loss
        logps = trainer._get_per_token_logps_and_entropies

        def recording_logps(model, *args, **kwargs):
            out = logps(model, *args, **kwargs)
            self.logps["policy" if model is trainer.model else "reference"].append(out[0].detach().clone())
            return out

        trainer._get_per_token_logps_and_entropies = recording_logps
        trainer.add_callback(self)

    def _tower(self, name):
        def hook(module, args, kwargs):
            pixels = args[0] if args else kwargs["hidden_states"]
            grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
            chunks = torch.split(pixels, grid.prod(-1).tolist())
            self.tower_calls.append((name, torch.is_grad_enabled(), [_digest(c) for c in chunks]))
        return hook

    def on_step_end(self, args, state, control, **kwargs):
        self.rng_after_step = torch.get_rng_state()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradient = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(model_dir, data, out, monkeypatch, *levers: str):
    monkeypatch.setitem(rewards.REWARD_FUNCS, "length_reward", _length_reward)
    script_args, training_args, model_args = parse_args([
        "--config", "recipes/smoke_cpu.yaml", "--model_name_or_path", str(model_dir), "--dataset_name", str(data),
        "--output_dir", str(out), "--offline_bootstrap", "false", "--max_completion_length", "8",
        "--num_generations", str(GROUP), "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
        "--max_steps", "1", "--save_strategy", "no", "--reward_funcs", "format_reward", "length_reward", *levers])
    decodes = []
    decode = datasets.Image.decode_example
    monkeypatch.setattr(datasets.Image, "decode_example",
                        lambda self, value, *a, **k: decodes.append(1) or decode(self, value, *a, **k))
    trainer = build_trainer(script_args, training_args, model_args)
    given_image_processor = trainer.processing_class.image_processor
    recorder = Recorder(trainer)
    trainer.train()
    monkeypatch.setattr(datasets.Image, "decode_example", decode)
    assert trainer.processing_class.image_processor is given_image_processor  # never replaced or rebuilt
    assert "_process_images" not in vars(trainer.processing_class)  # the per-step cache is gone after the step
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return dict(recorder=recorder, losses=losses, decodes=len(decodes), trainer=trainer)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, clevr_train, tmp_path_factory):
    variants = {
        "default": (),
        "no_dedup": ("--dedup_vision", "false"),
        "rollout_shuffle": ("--group_micro_batches", "false"),
        "no_image_once": ("--process_images_once", "false"),
        "compile": ("--compile_generation", "true"),
        "pixels_on_host": ("--send_images_once", "false"),
        "rope_per_row": ("--rope_index_once", "false"),
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        return {name: one_step(tiny_model_dir, clevr_train, tmp_path_factory.mktemp(name), monkeypatch, *levers)
                for name, levers in variants.items()}


def _relative_gradient_error(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).norm() / b[n].norm()).item() for n in a if b[n].norm() > 0)


def test_vision_dedup_keeps_completions_loss_and_gradient(runs):
    on, off = runs["default"], runs["no_dedup"]
    assert on["recorder"].completions == off["recorder"].completions and len(on["recorder"].completions) == 16
    # Step 1's GRPO loss is ~0 by construction (ratio 1, zero-mean advantages): the log-probs behind
    # it are what must agree, and they do bit for bit.
    assert on["losses"] == pytest.approx(off["losses"], abs=1e-7)
    for part in ("policy", "reference"):
        assert len(on["recorder"].logps[part]) == len(off["recorder"].logps[part]) > 0
        assert all(torch.equal(a, b) for a, b in zip(on["recorder"].logps[part], off["recorder"].logps[part]))
    assert _relative_gradient_error(on["recorder"].gradient, off["recorder"].gradient) < 1e-6
    vision = [n for n, g in off["recorder"].gradient.items() if "visual" in n and g.norm() > 0]
    assert vision  # the vision tower is trained and compared, not only the decoder
    # The decoder sees bit-identical features; only the tower's backward sums in another order.
    assert all(torch.equal(g, off["recorder"].gradient[n]) for n, g in on["recorder"].gradient.items()
               if "visual" not in n)


def test_vision_tower_receives_each_distinct_image_once_per_pass(runs):
    on, off = runs["default"]["recorder"].tower_calls, runs["no_dedup"]["recorder"].tower_calls
    # Per step: generation prefill (policy, no grad), 2 reference chunks, 2 policy micro-batches.
    assert [(name, grad) for name, grad, _ in on] == [(name, grad) for name, grad, _ in off] == [
        ("policy", False), ("reference", False), ("reference", False), ("policy", True), ("policy", True)]
    step_images = set(off[0][2])
    assert len(step_images) == 4 and len(off[0][2]) == 16  # TRL: every rollout's copy, 4 prompts x 4
    for _, _, images in on:
        assert len(images) == len(set(images))  # each distinct image once in every call
    assert set(on[0][2]) == step_images  # generation: every prompt's image, once
    for first, second in ((1, 2), (3, 4)):  # each pass's two micro-batches cover the step's images once
        assert sorted(on[first][2] + on[second][2]) == sorted(step_images)
    assert sum(len(images) for _, _, images in on) == 12 and sum(len(i) for _, _, i in off) == 48


def test_group_micro_batches_hold_whole_groups_and_keep_the_gradient(runs):
    grouped, shuffled = runs["default"], runs["rollout_shuffle"]
    for batch in grouped["recorder"].micro_batches:
        assert len(batch) == 8 and all(batch.count(prompt) == GROUP for prompt in set(batch))
    # TRL's own shuffle splits groups across micro-batches (what the lever changes) ...
    assert any(any(batch.count(p) != GROUP for p in set(batch)) for batch in shuffled["recorder"].micro_batches)
    # ... and the policy's vision tower then sees more distinct images per micro-batch.
    policy_calls = lambda run: [images for name, grad, images in run["recorder"].tower_calls if grad]  # noqa: E731
    assert sum(map(len, policy_calls(shuffled))) > sum(map(len, policy_calls(grouped))) == 4
    assert grouped["recorder"].completions == shuffled["recorder"].completions
    assert grouped["losses"] == pytest.approx(shuffled["losses"], abs=1e-7)
    assert _relative_gradient_error(grouped["recorder"].gradient, shuffled["recorder"].gradient) < 1e-6
    # The group shuffle makes TRL's random draw, so later steps sample from the same random stream.
    assert torch.equal(grouped["recorder"].rng_after_step, shuffled["recorder"].rng_after_step)


def test_image_processor_runs_once_per_distinct_image_per_step(runs):
    once, every = runs["default"], runs["no_image_once"]
    assert once["recorder"].processed == 4  # 4 prompts' images, for both of TRL's processor calls
    assert every["recorder"].processed == 2 * 16  # TRL: 16 copies, twice
    # Only the rows TRL uses are decoded, each distinct image once; before, every batch the Trainer
    # fetched was decoded: one per accumulation step (2) and accelerate's look-ahead, TRL using one.
    assert once["decodes"] == 4 and every["decodes"] >= 2 * 16
    # The same pixels reach the model, and the same completions, losses and gradient follow.
    assert torch.equal(once["recorder"].forward_pixels[0], every["recorder"].forward_pixels[0])
    assert once["recorder"].completions == every["recorder"].completions
    assert once["losses"] == pytest.approx(every["losses"], abs=1e-7)
    assert _relative_gradient_error(once["recorder"].gradient, every["recorder"].gradient) < 1e-6


def test_compile_generation_decodes_with_a_static_cache_and_the_same_completions(runs):
    """What runs on the CPU: the static cache and TRL's generation config allowing compilation.
    transformers compiles the decode step on CUDA only, so the compile itself is bench/gpu.sh's."""
    static, default = runs["compile"], runs["default"]
    assert static["recorder"].caches == {"StaticCache"} and default["recorder"].caches == {"DynamicCache"}
    config = static["trainer"].generation_config
    assert config.cache_implementation == "static" and config.disable_compile is False
    assert default["trainer"].generation_config.disable_compile is True  # off by default: TRL's setting
    assert static["recorder"].completions == default["recorder"].completions
    assert _relative_gradient_error(static["recorder"].gradient, default["recorder"].gradient) < 1e-6


def _assert_same_step(a: dict, b: dict) -> None:
    """Completions, policy and reference log-probs, losses and the step gradient, all bit for bit."""
    assert a["recorder"].completions == b["recorder"].completions and len(a["recorder"].completions) == 16
    assert a["losses"] == b["losses"]
    for part in ("policy", "reference"):
        assert len(a["recorder"].logps[part]) == len(b["recorder"].logps[part]) > 0
        assert all(torch.equal(x, y) for x, y in zip(a["recorder"].logps[part], b["recorder"].logps[part]))
    assert a["recorder"].gradient.keys() == b["recorder"].gradient.keys()
    assert all(torch.equal(g, b["recorder"].gradient[n]) for n, g in a["recorder"].gradient.items())


def test_pixels_are_assembled_on_the_device_from_each_distinct_image_once(tiny_model_dir, clevr_train):
    """The meta device stands for the GPU: the returned pixel_values are built there, and what is
    copied there is the distinct images' pixels only."""
    import json

    from PIL import Image

    from r1v_job.image_work import process_each_image_once
    from r1v_common.processing import load_processor

    processor = load_processor(str(tiny_model_dir))
    rows = [json.loads(line) for line in clevr_train.read_text().splitlines()[:2]]
    scenes = [Image.open(clevr_train.parent / row["image"]).convert("RGB") for row in rows]
    images = [[scenes[i // 4]] for i in range(8)]  # 2 prompts x 4 rollouts, TRL's layout
    texts = ["<|vision_start|><|image_pad|><|vision_end|>How many?"] * 8
    host = processor(images=images, text=texts, padding=True, return_tensors="pt")
    with process_each_image_once(processor, device="cpu"):
        same = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert torch.equal(same["pixel_values"], host["pixel_values"])
    moved = []
    to = torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):
        out = to(tensor, *args, **kwargs)
        if out.device.type == "meta" and tensor.device.type == "cpu" and tensor.is_floating_point():
            moved.append(len(tensor))
        return out

    torch.Tensor.to = recording_to
    try:
        with process_each_image_once(processor, device="meta"):
            on_device = processor(images=images, text=texts, padding=True, return_tensors="pt")
    finally:
        torch.Tensor.to = to
    assert on_device["pixel_values"].device.type == "meta"
    assert on_device["pixel_values"].shape == host["pixel_values"].shape
    assert moved == [len(host["pixel_values"]) // 4]  # 2 distinct images' patches, copied once


def test_sending_each_image_once_keeps_pixels_completions_and_gradient(runs):
    once, host = runs["default"], runs["pixels_on_host"]
    # The pixel values the passes read are the same, bit for bit, built from 4 distinct images.
    assert torch.equal(once["recorder"].forward_pixels[0], host["recorder"].forward_pixels[0])
    _assert_same_step(once, host)


def test_rope_positions_once_per_layout_keep_positions_completions_and_gradient(runs):
    once, per_row = runs["default"]["recorder"], runs["rope_per_row"]["recorder"]
    # The lever ran (its cache holds the step's layouts), and not where it is switched off.
    assert vars(runs["default"]["trainer"].model.model).get("_r1v_rope_cache")
    assert "_r1v_rope_cache" not in vars(runs["rope_per_row"]["trainer"].model.model)
    # Prefill, 2 reference chunks, 2 policy micro-batches: the same positions and deltas in every call.
    assert len(once.rope_calls) == len(per_row.rope_calls) == 5
    for (positions, deltas), (expected, expected_deltas) in zip(once.rope_calls, per_row.rope_calls):
        assert positions.dtype == expected.dtype and torch.equal(positions, expected)
        assert torch.equal(deltas, expected_deltas)
    _assert_same_step(runs["default"], runs["rope_per_row"])
