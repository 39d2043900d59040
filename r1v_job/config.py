"""The recipe's script fields, beside TRL's GRPOConfig and ModelConfig (one YAML holds all three)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import ScriptArguments

from .checkpoints import COMPLETION_MARKER


@dataclass
class R1VScriptArguments(ScriptArguments):
    """R1-V's data, rewards and the job's operational settings.

    Inherits `dataset_name`, `dataset_config`, `dataset_train_split` from TRL's ScriptArguments.
    """

    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths of a jsonl data set resolve against (default: the "
                          "jsonl's folder)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N rows of the training split."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy_reward", "format_reward"],
        metadata={"help": "Reward functions by name from r1v_job.rewards.REWARD_FUNCS; their sum is the reward."},
    )
    min_pixels: int = field(default=3136, metadata={"help": "Qwen2-VL processor min_pixels (R1-V: 3136)."})
    max_pixels: int = field(default=401408, metadata={"help": "Qwen2-VL processor max_pixels (R1-V: 401408)."})
    image_backend: str = field(
        default="pil",
        metadata={"help": "Image processor backend, pil or torchvision. pil gives R1-V's pixels exactly; "
                          "transformers 5's default, torchvision, differs by up to 0.03 (r1v_job.processing).",
                  "choices": ["pil", "torchvision"]},
    )
    metrics_port: int = field(
        default=8000,
        metadata={"help": "Port of the Prometheus /metrics endpoint served by the rank-0 process; 0 disables it."},
    )
    metrics_grace_seconds: float = field(
        default=60.0,
        metadata={"help": "Seconds /metrics keeps serving after the final model and the completion marker are "
                          "written, so Prometheus scrapes the final step and values; keep it at least two scrape "
                          "intervals (the chart scrapes every 15 s, kube-prometheus-stack's default is 30 s)."},
    )
    auto_resume: bool = field(
        default=True,
        metadata={"help": "Resume from the newest complete checkpoint in output_dir, skipping half-written ones."},
    )
    completion_marker: str = field(
        default=COMPLETION_MARKER,
        metadata={"help": "File written in output_dir once the final model is saved; the evaluator waits on it."},
    )
    offline_bootstrap: bool = field(
        default=False,
        metadata={"help": "Laptop/CI runs: when model_name_or_path or dataset_name does not exist, build a tiny "
                          "Qwen2-VL there (r1v_job.tiny) and synthetic CLEVR-like scenes (r1v_job.synthetic)."},
    )
    bootstrap_scenes: int = field(default=64, metadata={"help": "Scenes drawn by offline_bootstrap."})
    stop_at_step: int | None = field(
        default=None,
        metadata={"help": "Stop after this optimizer step, saving a checkpoint, the final model and the "
                          "completion marker as at a normal end, while the learning-rate schedule keeps its "
                          "horizon (max_steps, or num_train_epochs when max_steps is -1). R1-V's claim is at "
                          "step 100 of a linear schedule over 8,750 steps. Default: train to the horizon."},
    )


def last_step(max_steps: int, stop_at_step: int | None) -> int:
    """The step a run ends at: `stop_at_step` when it comes before the schedule's horizon `max_steps`."""
    return max_steps if stop_at_step is None else min(stop_at_step, max_steps)


def schedule_horizon(num_prompts: int, args, world_size: int) -> int:
    """The optimizer steps the LR schedule decays over: `max_steps` when set (> 0), else what
    transformers derives from `num_train_epochs` and the length of TRL's train dataloader.

    TRL's RepeatSampler keeps whole generation rounds only: B = prompts per generation round
    (per_device_train_batch_size x world_size x steps_per_generation / num_generations), and each
    rank's dataloader has (num_prompts // B) x steps_per_generation x num_iterations batches; the
    Trainer makes ceil(batches / gradient_accumulation_steps) optimizer steps of them per epoch.
    R1-V's CLEVR-70k on 8 GPUs: 2 epochs x 70,000 // 16 = 8,750 steps.
    """
    if args.max_steps > 0:
        return args.max_steps
    steps_per_generation = args.steps_per_generation or args.gradient_accumulation_steps
    per_round = args.per_device_train_batch_size * world_size * steps_per_generation // args.num_generations
    batches = (num_prompts // per_round) * steps_per_generation * args.num_iterations
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


# Weight dtypes a plain (non-DeepSpeed) optimizer would update in place, losing small updates.
_HALF_DTYPES = ("bfloat16", "float16", "auto")


def check_precision(training_args, model_args) -> None:
    """Refuse a recipe whose optimizer would update 16-bit weights directly.

    Without DeepSpeed, transformers' AdamW updates the weights in the dtype they were loaded in: at
    R1-V's lr 1e-6, 98% of bf16 weights never change (the update is below half a bf16 ulp). DeepSpeed's
    bf16/fp16 optimizers keep fp32 master weights themselves; without it the weights must load as
    float32, and `bf16: true` then trains under bf16 autocast, as R1-V's README run did.
    """
    dtype = str(model_args.dtype or "auto").removeprefix("torch.")
    if training_args.deepspeed or dtype not in _HALF_DTYPES:
        return
    weights = "the checkpoint's dtype (bfloat16 for Qwen2-VL)" if dtype == "auto" else dtype
    raise ValueError(
        f"dtype: {dtype} with deepspeed unset: AdamW would update {weights} weights in place and round most "
        "updates at lr 1e-6 away; set dtype: float32 (bf16: true then trains under bf16 autocast on fp32 "
        "weights, as R1-V's README run did) or deepspeed: recipes/zero2.json")


def step_batch(args, world_size: int) -> tuple[int, int]:
    """(prompts, rollouts) per optimizer step for GRPOConfig `args` on `world_size` processes.

    TRL's per_device_train_batch_size counts completions; each prompt has num_generations of them.
    """
    rollouts = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    return rollouts // args.num_generations, rollouts
