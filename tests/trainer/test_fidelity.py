"""The seed recipe learns what R1-V learned: its objective and gradient, LR schedule, stop, pixels and
precision, on the real TRL / transformers code with the tiny Qwen2-VL (docs/fidelity.md)."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, TrainerCallback

from r1v_job import grpo, rewards
from r1v_job.config import schedule_horizon
from r1v_job.preflight import UsageError, check_precision
from r1v_job.grpo import parse_args, run

REPO = Path(__file__).resolve().parents[2]
SEED = "recipes/r1v_qwen2vl_2b_clevr.yaml"
G = 8  # the seed's num_generations


def _seed(model, data, out, *extra):
    """The seed recipe itself, pointed at the tiny model and local scenes, on CPU without DeepSpeed."""
    return parse_args(["--config", SEED, "--use_cpu", "true", "--deepspeed", "", "--model_name_or_path", str(model),
                       "--dataset_name", str(data), "--output_dir", str(out), "--metrics_port", "0",
                       "--max_completion_length", "12", *extra])


# ---- R1-V's objective, written from its formulas (Deep-Agent/R1-V Qwen2VLGRPOTrainer.compute_loss) ----

def r1v_advantages(rewards_: torch.Tensor) -> torch.Tensor:
    grouped = rewards_.view(-1, G)
    mean = grouped.mean(1).repeat_interleave(G)
    std = grouped.std(1).repeat_interleave(G)  # unbiased, as torch's default
    return (rewards_ - mean) / (std + 1e-4)


def r1v_loss(logp, ref_logp, advantages, mask, beta):
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1  # k3
    per_token = -(torch.exp(logp - logp.detach()) * advantages[:, None] - beta * kl)
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


def completion_logps(model, inputs):
    """log p(completion token) from one forward pass of `model` over prompt + completion."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in inputs}
    logits = model(input_ids=ids, attention_mask=mask, **extra).logits
    n = inputs["completion_ids"].shape[1]
    logp = torch.log_softmax(logits[:, -n - 1:-1].float(), -1)
    return logp.gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)


class RecordingReward:
    """A reward that varies within groups (so advantages are real) and records what it saw."""

    __name__ = "recording_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        values = [float(len(rewards.completion_text(c)) % 5) for c in completions]
        images = [next(p["image"] for p in prompt[0]["content"] if p["type"] == "image") for prompt in prompts]
        self.calls.append((values, images))
        return values


class RecordLR(TrainerCallback):
    """The learning rate each optimizer step applies, read from the optimizer just before it steps."""

    def __init__(self):
        self.applied = {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.applied[state.global_step + 1] = optimizer.param_groups[0]["lr"]


@pytest.fixture(scope="module")
def scenes_480(tmp_path_factory):
    """CLEVR's 480x320 image size: Qwen2-VL resizes it (to 476x336), where the backends differ."""
    from r1v_job.synthetic import write_clevr_train

    return write_clevr_train(tmp_path_factory.mktemp("scenes480") / "clevr", 24, size=(480, 320), seed=1)


@pytest.fixture(scope="module")
def seed_run(tiny_model_dir, scenes_480, tmp_path_factory):
    """The seed recipe (fp32, for an exact comparison) for 3 steps of its 24-step horizon on 24 scenes,
    with the reference model perturbed so the KL term is not zero. The first loss call is checked
    against R1-V's objective as it happens."""
    recorder, lr = RecordingReward(), RecordLR()
    out = tmp_path_factory.mktemp("seed") / "run"
    args = _seed(tiny_model_dir, scenes_480, out, "--bf16", "false", "--stop_at_step", "3",
                 "--reward_funcs", "recording_reward")
    seen = {}
    build = grpo.build_trainer

    def build_and_instrument(*a, **kw):
        trainer = build(*a, **kw)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in trainer.ref_model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        real_generate, real_loss = trainer._generate_and_score_completions, trainer._compute_loss

        def generate_and_score(inputs):
            batch = real_generate(inputs)
            seen.setdefault("batch", dict(batch))  # in reward order; TRL shuffles it before the loss
            return batch

        def compute_loss(model, inputs):
            if "ours" not in seen:
                params = [p for p in model.parameters() if p.requires_grad]
                ours = real_loss(model, inputs)
                ours_grad = torch.autograd.grad(ours, params)
                trainer.args.use_bias_correction_kl = True  # TRL 1.16's default, for contrast
                biased = real_loss(model, inputs)
                biased_grad = torch.autograd.grad(biased, params)
                trainer.args.use_bias_correction_kl = False
                # R1-V's side: the same rollouts in generation order (the loss is a mean over them),
                # its own forward passes, advantages from the recorded rewards.
                batch = seen["batch"]
                advantages = r1v_advantages(torch.tensor(recorder.calls[0][0]))
                with torch.no_grad():
                    ref_logp = completion_logps(trainer.ref_model, batch)
                logp = completion_logps(model, batch)
                mask = batch["completion_mask"]
                theirs = r1v_loss(logp, ref_logp, advantages, mask, trainer.args.beta)
                theirs_grad = torch.autograd.grad(theirs, params)
                kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
                seen.update(ours=ours.item(), theirs=theirs.item(), biased=biased.item(), ours_grad=ours_grad,
                            theirs_grad=theirs_grad, biased_grad=biased_grad, advantages=advantages,
                            mean_kl=((kl * mask).sum() / mask.sum()).item())
            return real_loss(model, inputs)

        trainer._generate_and_score_completions = generate_and_score
        trainer._compute_loss = compute_loss
        return trainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rewards.REWARD_FUNCS, "recording_reward", recorder)
        mp.setattr(grpo, "build_trainer", build_and_instrument)
        trainer = run(*args, callbacks=[lr])
    return dict(trainer=trainer, args=args, out=out, seen=seen, recorder=recorder, lr=lr.applied)


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def test_loss_and_gradient_equal_r1v_objective_with_nonzero_kl(seed_run):
    seen = seed_run["seen"]
    print("loss: TRL {ours:.9f} R1-V {theirs:.9f}; mean token KL {mean_kl:.4f}; largest gradient entry {g:.3e}; "
          "gradient apart by {d:.3e} (TRL default use_bias_correction_kl: {b:.3e})".format(
              **seen, g=max(g.abs().max().item() for g in seen["theirs_grad"]),
              d=_max_diff(seen["ours_grad"], seen["theirs_grad"]),
              b=_max_diff(seen["biased_grad"], seen["theirs_grad"])))
    assert seen["mean_kl"] > 1e-3  # the KL term is really there
    torch.testing.assert_close(seen["batch"]["advantages"], seen["advantages"], atol=1e-6, rtol=0)
    assert seen["advantages"].abs().max() > 0.5  # rewards vary within groups
    assert abs(seen["ours"] - seen["theirs"]) < 1e-6
    scale = max(g.abs().max().item() for g in seen["theirs_grad"])
    assert scale > 1e-3
    assert _max_diff(seen["ours_grad"], seen["theirs_grad"]) < 1e-6
    # TRL 1.16's default use_bias_correction_kl: the same loss value, another gradient.
    assert abs(seen["biased"] - seen["theirs"]) < 1e-6
    assert _max_diff(seen["biased_grad"], seen["theirs_grad"]) > 100 * 1e-6


def test_loss_equals_r1v_objective_on_fixed_tensors_through_trl(seed_run):
    """Fixed log-probs, reference log-probs, rewards and masks (ragged completions) through the
    trainer's real `_compute_loss`, with only the model's log-prob computation replaced."""
    trainer = seed_run["trainer"]
    gen = torch.Generator().manual_seed(3)
    n, t = 2 * G, 7
    logp = (-3 * torch.rand(n, t, generator=gen)).requires_grad_()
    ref = (logp.detach() + 0.3 * torch.randn(n, t, generator=gen))
    reward_values = torch.randint(0, 3, (n,), generator=gen).float()
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    advantages = r1v_advantages(reward_values)
    inputs = {"prompt_ids": torch.zeros(n, 3, dtype=torch.long), "prompt_mask": torch.ones(n, 3, dtype=torch.long),
              "completion_ids": torch.zeros(n, t, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    trainer.current_gradient_accumulation_steps = 1
    try:
        ours = trainer._compute_loss(trainer.model, inputs)
    finally:
        del trainer._get_per_token_logps_and_entropies
    (ours_grad,) = torch.autograd.grad(ours, logp)
    theirs = r1v_loss(logp, ref, advantages, mask, 0.04)
    (theirs_grad,) = torch.autograd.grad(theirs, logp)
    assert abs(ours.item() - theirs.item()) < 1e-6
    assert (ours_grad - theirs_grad).abs().max() < 1e-6
    assert ours_grad[mask == 0].abs().max() == 0 and theirs_grad.abs().max() > 1e-2


def test_lr_follows_r1v_two_epoch_horizon_and_training_stops_at_the_stop_step(seed_run):
    trainer, out = seed_run["trainer"], seed_run["out"]
    _, train_args, _ = seed_run["args"]
    # 24 scenes, 2 prompts (16 completions) per step, 2 epochs: 24 steps, derived by transformers.
    horizon = schedule_horizon(24, train_args, world_size=1)
    assert horizon == 24 == trainer.state.max_steps
    lr0 = train_args.learning_rate
    assert seed_run["lr"] == pytest.approx({s: lr0 * (1 - (s - 1) / horizon) for s in (1, 2, 3)}, rel=1e-9)
    # max_steps: 3 would have decayed to a third by step 3; stop_at_step keeps the 24-step schedule.
    assert seed_run["lr"][3] > 0.9 * lr0
    assert trainer.state.global_step == 3
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    assert json.loads((out / "training_complete.json").read_text())["global_step"] == 3


def test_seed_schedule_at_steps_1_50_100_is_r1vs(seed_run):
    """The scheduler the trainer builds, over the horizon of CLEVR-70k on one 8-GPU node."""
    trainer = seed_run["trainer"]
    _, train_args, _ = seed_run["args"]
    horizon = schedule_horizon(70_000, train_args, world_size=8)
    assert horizon == 8750
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=train_args.learning_rate)
    trainer.lr_scheduler = None
    scheduler = trainer.create_scheduler(num_training_steps=horizon, optimizer=optimizer)
    applied = {}
    for step in range(1, 101):
        applied[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step in (1, 50, 100):
        assert applied[step] == pytest.approx(1e-6 * (1 - (step - 1) / 8750), rel=1e-12)
    assert applied[100] == pytest.approx(0.98869e-6, rel=1e-5)


@pytest.mark.parametrize("rows,epochs,per_device,accum,spg", [
    (24, 2, 16, 1, 1),   # the seed's batch: 2 prompts x 8 per step
    (20, 3, 8, 2, 2),    # R1-V's own split (8 x grad-accum 2), an odd data size
    (24, 1, 8, 1, 2),    # two optimizer steps per generation round
    (17, 2, 16, 1, 1),   # a data size the batch does not divide: the remainder is dropped
])
def test_horizon_follows_data_size_epochs_and_batch(seed_run, rows, epochs, per_device, accum, spg):
    """schedule_horizon against transformers' own count over TRL's real train dataloader."""
    trainer = seed_run["trainer"]
    # A copy of the run's GRPOConfig with another batch (a new GRPOConfig would reset accelerate's
    # state); generation_batch_size as GRPOConfig derives it on 1 process.
    args = copy.copy(trainer.args)
    args.num_train_epochs, args.per_device_train_batch_size, args.max_steps = epochs, per_device, -1
    args.gradient_accumulation_steps, args.steps_per_generation = accum, spg
    args.generation_batch_size = per_device * spg
    saved = trainer.args, trainer._train_batch_size, trainer.train_dataset
    trainer.args, trainer._train_batch_size = args, per_device
    trainer.train_dataset = saved[2].select(range(rows))
    try:
        max_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    finally:
        trainer.args, trainer._train_batch_size, trainer.train_dataset = saved
    assert max_steps == schedule_horizon(rows, args, world_size=1)


def test_trainer_feeds_pil_backend_pixels(seed_run):
    """What the model was trained on equals a PIL-backend Qwen2-VL image processor's output, bit for
    bit, and the torchvision backend's differs on these 480x320 images."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorPil

    _, images = seed_run["recorder"].calls[0]
    size = {"shortest_edge": 3136, "longest_edge": 401408}
    expected = Qwen2VLImageProcessorPil(size=size)(images=images, return_tensors="pt")["pixel_values"]
    fed = seed_run["seen"]["batch"]["pixel_values"]
    assert fed.shape == expected.shape and torch.equal(fed, expected)
    other = Qwen2VLImageProcessor(size=size)(images=images, return_tensors="pt")["pixel_values"]
    assert (other - expected).abs().max() > 1e-3


def test_an_unknown_image_backend_names_the_choices(tiny_model_dir):
    from r1v_common.processing import load_processor

    with pytest.raises(ValueError, match="image_backend 'cv2': choose one of pil, torchvision"):
        load_processor(tiny_model_dir, image_backend="cv2")


# ---- Precision -------------------------------------------------------------------------------

def _config(dtype, deepspeed):
    class Ns:
        pass

    train, model = Ns(), Ns()
    train.deepspeed, model.dtype = deepspeed, dtype
    return train, model


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "auto", None])
def test_16bit_weights_without_deepspeed_are_refused_with_the_fix(dtype):
    with pytest.raises(UsageError, match=r"dtype: \w+ with deepspeed unset: .*set dtype: float32"):
        check_precision(None, *_config(dtype, None))


@pytest.mark.parametrize("dtype,deepspeed", [("float32", None), ("float32", ""), ("bfloat16", "recipes/zero2.json")])
def test_fp32_weights_or_deepspeed_pass(dtype, deepspeed):
    check_precision(None, *_config(dtype, deepspeed))


def test_refused_before_the_model_loads(tmp_path):
    args = _seed(tmp_path / "no-such-model", tmp_path / "no-such-data.jsonl", tmp_path / "out",
                 "--dtype", "bfloat16")
    with pytest.raises(UsageError, match="dtype: bfloat16 with deepspeed unset"):
        grpo.build_trainer(*args)


def test_bf16_weights_would_not_move_at_r1v_lr():
    """Why the refusal: one AdamW step at lr 1e-6 on bf16 weights leaves almost all of them unchanged."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter((0.02 * torch.randn(256, 256)).bfloat16())
    before = weight.detach().clone()
    weight.grad = torch.randn_like(weight)
    torch.optim.AdamW([weight], lr=1e-6, weight_decay=0.0).step()
    assert (weight.detach() != before).float().mean() < 0.1


def test_seed_recipe_without_deepspeed_trains_fp32_weights_under_bf16_autocast(tiny_model_dir, clevr_train, tmp_path,
                                                                              monkeypatch):
    """The seed recipe as it is (dtype float32, bf16 true), DeepSpeed off: the weights stay fp32 and
    R1-V's 1e-6 step moves them (a reward that varies within groups, so there is a gradient)."""
    monkeypatch.setitem(rewards.REWARD_FUNCS, "recording_reward", RecordingReward())
    args = _seed(tiny_model_dir, clevr_train, tmp_path / "run", "--stop_at_step", "1",
                 "--max_completion_length", "8", "--reward_funcs", "recording_reward")
    assert args[1].bf16 and args[2].dtype == "float32" and args[1].learning_rate == 1e-6
    trainer = run(*args)
    assert trainer.accelerator.mixed_precision == "bf16"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "run").state_dict()
    moved = [(trained[k] != base[k]).float().mean().item() for k in trained
             if k.endswith(("q_proj.weight", "up_proj.weight"))]
    assert len(moved) >= 4 and min(moved) > 0.9


# ---- World size ----------------------------------------------------------------------------

@pytest.mark.slow
def test_horizon_follows_the_world_size_under_torchrun(tiny_model_dir, clevr_train, tmp_path):
    """2 processes double the prompts per step and halve the horizon: transformers' count under
    torchrun equals schedule_horizon(rows, args, 2)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.update(PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0",
               PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(30500 + os.getpid() % 1000))
    extra = ["--stop_at_step", "1", "--max_completion_length", "4"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "-m", "r1v_job", "--config", SEED, "--use_cpu", "true",
           "--deepspeed", "", "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(clevr_train),
           "--output_dir", str(out), "--metrics_port", "0", *extra]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    _, train_args, _ = _seed(tiny_model_dir, clevr_train, out, *extra)
    assert state["max_steps"] == schedule_horizon(24, train_args, world_size=2) == 12
    assert schedule_horizon(24, train_args, world_size=1) == 24
