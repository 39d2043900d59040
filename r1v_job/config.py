"""The recipe's script fields, beside TRL's GRPOConfig and ModelConfig (one YAML holds all three)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import ScriptArguments

from r1v_common.checkpoints import COMPLETION_MARKER


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
        metadata={"help": "Reward functions, a list: names from r1v_job.rewards.REWARD_FUNCS or import paths "
                          "`my_pkg.rewards:fn` (module:function, as entry points write it); their sum is the reward."},
    )
    min_pixels: int = field(default=3136, metadata={"help": "Qwen2-VL processor min_pixels (R1-V: 3136)."})
    max_pixels: int = field(default=401408, metadata={"help": "Qwen2-VL processor max_pixels (R1-V: 401408)."})
    image_backend: str = field(
        default="pil",
        metadata={"help": "Image processor backend, pil or torchvision. pil gives R1-V's pixels exactly; "
                          "transformers 5's default, torchvision, differs by up to 0.03 (r1v_common.processing).",
                  "choices": ["pil", "torchvision"]},
    )
    metrics_port: int = field(
        default=8000,
        metadata={"help": "Port of the Prometheus /metrics endpoint served by the rank-0 process; 0 disables it."},
    )
    metrics_addr: str = field(
        default="0.0.0.0",
        metadata={"help": "Address the /metrics endpoint binds: 0.0.0.0 (every IPv4 interface, what a pod's "
                          "scrape needs), the pod's IP, 127.0.0.1 (this host only) or an IPv6 address such as ::."},
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
    preflight_only: bool = field(
        default=False,
        metadata={"help": "Run the input checks that need no GPU and no model load (recipe values, rewards, model "
                          "and data paths, the data set's rows, the metrics port), then exit: 0 when usable, 2 with "
                          "one line naming the problem. For a pod's init step, so bad input fails in seconds."},
    )
    output_dir_lease_stale_minutes: float = field(
        default=5.0,
        metadata={"help": "One writer per output_dir: rank 0 holds a lease there (OUTPUT_DIR/.r1v-lease.json, renewed "
                          "every 30 s or a third of this) and a second run on the folder exits 2 naming the owner. A "
                          "lease not renewed for this many minutes is stale (its holder died) and is taken over with a "
                          "warning. 0 turns the lease off."},
    )
    completion_marker: str = field(
        default=COMPLETION_MARKER,
        metadata={"help": "File written in output_dir once the final model is saved. The evaluator waits on "
                          f"{COMPLETION_MARKER}, whatever this is set to."},
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
    # Speed levers (docs/performance.md has what each saves). None changes the algorithm.
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
    send_images_once: bool = field(
        default=True,
        metadata={"help": "With process_images_once: copy each distinct image's pixels to the device once and "
                          "build the rollouts' pixel_values there by indexing, instead of concatenating every "
                          "rollout's copy on the CPU and copying them all; same pixel values."},
    )
    rope_index_once: bool = field(
        default=True,
        metadata={"help": "Compute Qwen2-VL/Qwen2.5-VL M-RoPE position ids once per distinct row layout, with one "
                          "host read and one device copy per forward, instead of transformers' per-row loop with "
                          "host syncs in every forward; bit-identical positions (r1v_job.vision_dedup)."},
    )


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


def step_batch(args, world_size: int) -> tuple[int, int]:
    """(prompts, rollouts) per optimizer step for GRPOConfig `args` on `world_size` processes.

    TRL's per_device_train_batch_size counts completions; each prompt has num_generations of them.
    """
    rollouts = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    return rollouts // args.num_generations, rollouts
