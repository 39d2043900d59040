"""The recipe's script fields, beside TRL's GRPOConfig and ModelConfig (one YAML holds all three)."""

from __future__ import annotations

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
    metrics_port: int = field(
        default=8000,
        metadata={"help": "Port of the Prometheus /metrics endpoint served by the rank-0 process; 0 disables it."},
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
    # Speed levers (issue 12; docs/performance.md has what each saves). None changes the algorithm.
    dedup_vision: bool = field(
        default=True,
        metadata={"help": "Run the vision tower once per distinct image per pass (generation prefill, reference, "
                          "policy) and share its features among the image's rollouts; same values and gradients. "
                          "Qwen2-VL and Qwen2.5-VL (r1v_job.vision_dedup); other models run unchanged."},
    )
    group_micro_batches: bool = field(
        default=True,
        metadata={"help": "Shuffle whole groups of num_generations rollouts, not single rollouts, before cutting "
                          "micro-batches, so each micro-batch holds whole groups (few distinct images). Same "
                          "gradient with loss_type grpo or dapo and equal micro-batches."},
    )
    process_images_once: bool = field(
        default=True,
        metadata={"help": "Decode only the dataset rows TRL uses, each distinct image once, and run the image "
                          "processor once per distinct image per step; same pixel values (r1v_job.image_work)."},
    )
    compile_generation: bool = field(
        default=False,
        metadata={"help": "Generate with a static KV cache and let transformers compile the decode step (CUDA "
                          "only; TRL disables it). Opt-in until measured: bench/gpu.sh measures it."},
    )


def last_step(max_steps: int, stop_at_step: int | None) -> int:
    """The step a run ends at: `stop_at_step` when it comes before the schedule's horizon `max_steps`."""
    return max_steps if stop_at_step is None else min(stop_at_step, max_steps)


def step_batch(args, world_size: int) -> tuple[int, int]:
    """(prompts, rollouts) per optimizer step for GRPOConfig `args` on `world_size` processes.

    TRL's per_device_train_batch_size counts completions; each prompt has num_generations of them.
    """
    rollouts = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    return rollouts // args.num_generations, rollouts
