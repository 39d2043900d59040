"""Time real GRPOTrainer steps phase by phase, with TRL's batched generation or R1-V's per-prompt one."""

from __future__ import annotations

import functools
import gc
import importlib.util
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

from r1v_job.grpo import build_trainer, parse_args
from r1v_job.vision_dedup import vision_towers

PHASES = ("generation", "ref_logps", "old_logps", "policy_forward", "backward", "optimizer")
COUNTS = ("generate_calls", "rollouts", "prompt_tokens", "completion_tokens", "image_patches",
          "sequence_tokens_squared", "vision_images")

# The speed levers (recipe switches in r1v_job.config), for `levers=` in a variant.
LEVERS = {"dedup": "dedup_vision", "group": "group_micro_batches", "images": "process_images_once",
          "compile": "compile_generation", "pixels": "send_images_once", "rope": "rope_index_once"}

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name(), first match
# wins: the vendor's datasheet figures (H100 SXM and H200: 989 TFLOP/s).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0}

# `precision=` of a variant: the weights the passes compute with, and where the update happens.
#   bf16           bf16 weights (and gradients) for every pass, AdamW on fp32 master copies, the result
#                  copied back: what DeepSpeed ZeRO-2 with bf16 does in the seed recipe's real run
#   fp32-autocast  fp32 weights trained under bf16 autocast: the seed recipe run without DeepSpeed
# Without it the recipe's own dtype and bf16 settings hold (the CPU bench: fp32, no autocast).
# Both load fp32 weights (the seed recipe's dtype, which the trainer's preflight requires without DeepSpeed);
# bf16 then casts the policy and the reference to bf16 after keeping fp32 masters of the loaded values.
PRECISIONS = {"bf16": {"dtype": "float32", "bf16": True}, "fp32-autocast": {"dtype": "float32", "bf16": True}}


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW on fp32 master copies of (bf16) parameters: each step copies the gradients into the masters,
    updates them and writes them back in the parameters' dtype, as DeepSpeed's bf16 optimizer does
    (ZeRO-2 shards the masters and the Adam states across GPUs; one GPU holds them all here)."""

    def __init__(self, params, masters: dict | None = None, **kwargs):
        """`masters`: fp32 values by parameter id, taken before the parameters were cast (else their own)."""
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        masters, self.pairs, master_groups = masters or {}, [], []
        for group in groups:
            copies = [masters[id(p)] if id(p) in masters else p.detach().float().clone() for p in group["params"]]
            self.pairs += list(zip(group["params"], copies))
            master_groups.append({**group, "params": copies})
        super().__init__(master_groups, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        for param, master in self.pairs:
            master.grad = None if param.grad is None else param.grad.float()
        loss = super().step(closure)
        for param, master in self.pairs:
            master.grad = None
            param.copy_(master)
        return loss


@dataclass
class Variant:
    """One configuration to measure, written `style[:option,option,...]` on the command line.

    style: `r1v` (R1-V: each micro-step holds one prompt's G rollouts and generates them with one
    `generate(num_return_sequences=G)` call) or `ours` (TRL: one batched `generate` call for every
    prompt of the optimizer step). Options: `mb=N` rollouts per micro-batch (default G, R1-V's 1
    prompt x G per device), `rounds=N` generate calls per optimizer step (default 1; TRL's
    steps_per_generation is then micro-steps / N), `gc` gradient
    checkpointing, `liger` Liger kernels, `warmup=N` / `steps=N` for this variant only,
    `levers=` the speed levers switched on, all others off (`none`, `all`, or names from LEVERS joined
    by `+`, e.g. `levers=dedup+group`; without it the recipe's defaults hold), `precision=` (PRECISIONS), or any
    `recipe_field=value` (YAML value).
    """

    spec: str
    style: str = "ours"
    precision: str | None = None  # a PRECISIONS key; None: the recipe's own
    micro_batch: int | None = None
    generation_rounds: int = 1
    warmup: int | None = None  # None: the command line's --warmup / --steps
    steps: int | None = None
    overrides: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        style, _, options = spec.partition(":")
        if style not in ("r1v", "ours"):
            raise ValueError(f"variant {spec!r}: style must be r1v or ours")
        variant = cls(spec=spec, style=style)
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key == "mb":
                variant.micro_batch = int(value)
            elif key == "rounds":
                variant.generation_rounds = int(value)
            elif key in ("warmup", "steps"):
                setattr(variant, key, int(value))
            elif key == "gc":
                variant.overrides["gradient_checkpointing"] = True
            elif key == "liger":
                variant.overrides["use_liger_kernel"] = True
            elif key == "precision":
                if value not in PRECISIONS:
                    raise ValueError(f"variant {spec!r}: precision must be one of {', '.join(PRECISIONS)}")
                variant.precision = value
            elif key == "levers":
                names = set(LEVERS) if value == "all" else set() if value == "none" else set(value.split("+"))
                if names - set(LEVERS):
                    raise ValueError(f"variant {spec!r}: unknown lever(s) {sorted(names - set(LEVERS))}; "
                                     f"known: {', '.join(LEVERS)}, all, none")
                variant.overrides.update({field: name in names for name, field in LEVERS.items()})
            elif value:
                variant.overrides[key] = yaml.safe_load(value)
            else:
                raise ValueError(f"variant {spec!r}: option {option!r} is not mb=, rounds=, gc, liger, levers=, "
                                 f"precision=, warmup=, steps= or field=value")
        if style == "r1v" and (variant.micro_batch is not None or variant.generation_rounds != 1):
            raise ValueError(f"variant {spec!r}: r1v fixes the micro-batch at one prompt's G rollouts")
        return variant

    def batch_fields(self, prompts: int, generations: int) -> dict:
        """per_device_train_batch_size, gradient_accumulation_steps and steps_per_generation for a step
        of prompts x generations rollouts on one device."""
        rollouts = prompts * generations
        micro = generations if self.style == "r1v" else (self.micro_batch or generations)
        if rollouts % micro:
            raise ValueError(f"variant {self.spec!r}: {rollouts} rollouts do not split into micro-batches of {micro}")
        accumulation = rollouts // micro
        # r1v generates in every micro-step (its prompt only); ours generates generation_rounds times a step.
        rounds = accumulation if self.style == "r1v" else self.generation_rounds
        if accumulation % rounds or (rollouts // rounds) % generations:
            raise ValueError(f"variant {self.spec!r}: {accumulation} micro-batches do not split into {rounds} "
                             f"generation rounds of whole prompt groups")
        return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
                "steps_per_generation": accumulation // rounds, "generation_batch_size": None}


class PhaseTimer(TrainerCallback):
    """Wall time of each optimizer step and of TRL's phases inside it, plus what the step generated.

    Phases are timed by wrapping the trainer's own methods, so the code measured is the code that trains:
    generation = `_generate_single_turn` (model.generate), ref_logps / old_logps / policy_forward =
    `_get_per_token_logps_and_entropies` told apart by model and grad mode, backward =
    `accelerator.backward`, optimizer = gradient clipping + `optimizer.step`. A step runs from the end of
    the previous one, so data loading, processing, rewards and logging land in "other". On a GPU each
    boundary synchronises, or asynchronous kernels would be billed to whichever phase waits for them.
    """

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.steps: list[dict] = []
        self._phases: dict = defaultdict(float)
        self._inner: dict = defaultdict(float)  # seconds inside a phase, reported apart (not in "other")
        self._counts: dict = defaultdict(int)
        self._step_start = self._optimizer_start = self._cpu_start = None
        self.vision = None  # parameter_split's vision part, set by instrument

    @contextmanager
    def phase(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self._phases[name] += time.perf_counter() - start

    def instrument(self, trainer, style: str, params: dict) -> None:
        self.vision = params
        # What the vision towers actually encode (after any dedup), for the FLOP count.
        for model in (trainer.model, trainer.ref_model):
            for tower in vision_towers(model) if model is not None else ():
                tower.register_forward_pre_hook(self._count_vision, with_kwargs=True)
        # M-RoPE position ids (inside the passes, so also billed to them): what the rope lever saves.
        for model in (trainer.model, trainer.ref_model):
            for inner in (m for m in model.modules() if hasattr(m, "rope_deltas")) if model is not None else ():
                inner.get_rope_index = self._timed(inner.get_rope_index, "rope_index")
        generate = trainer._generate_single_turn
        if style == "r1v":
            generate = r1v_generation(trainer, generate)
            trainer.generation_config.num_return_sequences = trainer.num_generations

        def timed_generate(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
            with self.phase("generation"):
                completion_ids, logprobs = generate(prompt_ids, images, multimodal_fields, num_generations,
                                                    *args, **kwargs)
            self._counts["generate_calls"] += len(prompt_ids) // trainer.num_generations if style == "r1v" else 1
            self._counts["rollouts"] += len(completion_ids)
            self._counts["prompt_tokens"] += sum(len(ids) for ids in prompt_ids)
            self._counts["completion_tokens"] += sum(len(ids) for ids in completion_ids)
            self._counts["sequence_tokens_squared"] += sum((len(p) + len(c)) ** 2
                                                           for p, c in zip(prompt_ids, completion_ids))
            grid = multimodal_fields.get("image_grid_thw")
            if grid is not None:
                grid = torch.as_tensor(grid)
                self._counts["image_patches"] += int(grid.prod(-1).sum())
                # What the algorithm needs: each prompt's image once (TRL lays a prompt's G rollouts in a
                # row, one image each), whatever the towers were handed.
                group = trainer.num_generations
                distinct = grid[::group] if len(grid) == len(prompt_ids) and len(grid) % group == 0 else grid
                self._counts["needed_vision_forward"] += vision_forward_flops(distinct.prod(-1).tolist(), self.vision)
            return completion_ids, logprobs

        logps = trainer._get_per_token_logps_and_entropies

        def timed_logps(model, *args, **kwargs):
            if torch.is_grad_enabled():
                name = "policy_forward"
            else:  # TRL passes self.model for the old policy, the reference model otherwise
                name = "old_logps" if model is trainer.model else "ref_logps"
            with self.phase(name):
                return logps(model, *args, **kwargs)

        backward = trainer.accelerator.backward

        def timed_backward(*args, **kwargs):
            with self.phase("backward"):
                return backward(*args, **kwargs)

        clip = trainer._clip_grad_norm

        def timed_clip(*args, **kwargs):
            with self.phase("optimizer"):
                return clip(*args, **kwargs)

        trainer._generate_single_turn = timed_generate
        trainer._get_per_token_logps_and_entropies = timed_logps
        trainer.accelerator.backward = timed_backward
        trainer._clip_grad_norm = timed_clip

    def _timed(self, function, name: str):
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.sync()
                self._inner[name] += time.perf_counter() - start
        return timed

    def _count_vision(self, module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid is None:
            return
        flops = vision_forward_flops(grid.prod(-1).tolist(), self.vision)
        # A pass with grad also runs the tower's backward: 2 more forward-equivalents.
        self._counts["vision_flops"] += flops * (3 if torch.is_grad_enabled() else 1)
        self._counts["vision_grad_forward"] += flops if torch.is_grad_enabled() else 0
        self._counts["vision_images"] += len(grid)

    def on_train_begin(self, args, state, control, **kwargs):
        self.sync()
        self._step_start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.sync()
        self._optimizer_start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.sync()
        self._phases["optimizer"] += time.perf_counter() - self._optimizer_start

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        now, cpu = time.perf_counter(), time.process_time()
        step = {"step_s": now - self._step_start, "cpu_s": cpu - self._cpu_start,
                **{p: self._phases.get(p, 0.0) for p in PHASES},
                **{c: self._counts.get(c, 0) for c in COUNTS},
                **{c: self._counts.get(c, 0) for c in ("vision_flops", "vision_grad_forward", "needed_vision_forward")}}
        step["other"] = step["step_s"] - sum(step[p] for p in PHASES)
        step["rope_index"] = self._inner.get("rope_index", 0.0)
        self.steps.append(step)
        self._phases, self._counts, self._inner = defaultdict(float), defaultdict(int), defaultdict(float)
        self._step_start, self._cpu_start = now, cpu


def _one_row(fields: dict, row: int, rows: int) -> dict:
    """The multimodal processor fields of prompt row `row` out of `rows` (one image per row)."""
    grid = fields.get("image_grid_thw")
    one = {}
    for key, value in fields.items():
        if key == "pixel_values":  # flattened patches of every image, in row order
            if grid is None or len(grid) != rows:
                raise ValueError("R1-V-style generation needs exactly one image per prompt")
            patches = torch.as_tensor(grid).prod(-1).tolist()
            start = sum(patches[:row])
            one[key] = value[start:start + patches[row]]
        elif len(value) == rows:
            one[key] = value[row:row + 1]
        else:
            raise ValueError(f"cannot split the processor field {key!r} ({len(value)} entries) by prompt")
    return one


def r1v_generation(trainer, generate):
    """R1-V's rollouts on TRL's generation code: one `generate` call per prompt, num_return_sequences=G.

    TRL's sampler lays out each prompt G times in a row; this keeps the first copy of each group, lets
    generate expand it G times (the generation config has num_return_sequences=G) and returns the G
    completions in the rows of the group.
    """
    group = trainer.num_generations

    def per_prompt(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        completions = []
        for start in range(0, len(prompt_ids), group):
            if any(list(ids) != list(prompt_ids[start]) for ids in prompt_ids[start:start + group]):
                raise ValueError("expected each prompt repeated num_generations times in a row")
            fields = _one_row(multimodal_fields, start, len(prompt_ids))
            ids, _ = generate([prompt_ids[start]], images[start:start + 1] if images else images, fields,
                              num_generations, *args, **kwargs)
            if len(ids) != group:
                raise RuntimeError(f"generate returned {len(ids)} completions for one prompt, expected {group}")
            completions.extend(ids)
        return completions, None

    return per_prompt


def parameter_split(model) -> dict:
    """Parameters by the part of the FLOP count they enter (decoder blocks, LM head, vision tower and its
    patch merger), and the shapes attention FLOPs depend on."""
    vision = merger = embed = total = 0
    for name, p in model.named_parameters():  # tied weights are listed once
        total += p.numel()
        if "visual" in name:
            vision += p.numel()
            merger += p.numel() if ".merger." in name else 0
        elif "embed_tokens" in name or "lm_head" in name:
            embed += p.numel()
    text = model.config.get_text_config()
    head = text.vocab_size * text.hidden_size
    split = {"total": total, "vision": vision, "merger": merger, "decoder": total - vision - embed, "lm_head": head,
             "text_layers": text.num_hidden_layers,
             "text_attention_dim": text.num_attention_heads * (getattr(text, "head_dim", None)
                                                               or text.hidden_size // text.num_attention_heads)}
    vision_config = getattr(model.config, "vision_config", None)
    if vision_config is not None:
        depth = vision_config.depth
        full = getattr(vision_config, "fullatt_block_indexes", None)  # Qwen2.5-VL: window attention elsewhere
        merge = vision_config.spatial_merge_size
        window = (getattr(vision_config, "window_size", 0) // (vision_config.patch_size * merge)) ** 2 * merge ** 2
        split.update({"vision_dim": getattr(vision_config, "embed_dim", None) or vision_config.hidden_size,
                      "vision_full_layers": depth if full is None else len(full),
                      "vision_window_layers": 0 if full is None else depth - len(full),
                      "vision_window_patches": window, "merge_patches": merge ** 2})
    return split


def vision_forward_flops(patches: list[int], params: dict) -> float:
    """One vision-tower forward over images of `patches` patches each: every weight but the patch
    merger's once per patch, the merger's once per merged token (merge_patches patches), and the
    attention scores and weighted sums (QK^T and AV: 4 x dim x keys per query) within each image
    (Qwen2.5-VL: within windows of vision_window_patches on its window layers)."""
    if not patches or "vision_dim" not in params:
        return 0.0
    total = sum(patches)
    weights = 2 * (params["vision"] - params["merger"]) * total + 2 * params["merger"] * total / params["merge_patches"]
    full_keys = sum(n * n for n in patches)
    window_keys = sum(n * min(n, params["vision_window_patches"] or n) for n in patches)
    attention = 4 * params["vision_dim"] * (params["vision_full_layers"] * full_keys
                                             + params["vision_window_layers"] * window_keys)
    return weights + attention


def language_forward_flops(step: dict, params: dict) -> float:
    """One language-model forward over the step's rollouts (see step_flops)."""
    tokens = step["prompt_tokens"] + step["completion_tokens"]
    attention = 2 * params["text_layers"] * params["text_attention_dim"] * step["sequence_tokens_squared"]
    return 2 * (params["decoder"] * tokens + params["lm_head"] * step["completion_tokens"]) + attention


def needed_flops(step: dict, params: dict, passes: float) -> float:
    """FLOPs the algorithm needs in one step, the numerator of MFU: `passes` forward-equivalents of the
    language model over every rollout, and as many of the vision tower over each prompt's image once
    (each distinct image encoded once per pass), however the implementation runs them: repeated
    encodings and recomputation (gradient checkpointing) are not counted."""
    return passes * (language_forward_flops(step, params) + step.get("needed_vision_forward", 0))


def step_flops(step: dict, params: dict, passes: float, recompute: bool = False) -> float:
    """FLOPs executed in one step: `passes` forward-equivalents of the language model over every rollout,
    plus what the vision towers encoded (see docs/performance.md); with `recompute` (gradient
    checkpointing) one more forward of the policy pass, language model and towers.

    A language-model forward over the step's rollouts costs 2 x decoder params x (prompt + completion
    tokens) + 2 x LM-head params x completion tokens (TRL and generate only project the scored /
    sampled positions) + causal attention, 2 x layers x attention dim x (sequence length)^2 per
    rollout. The vision part counts the images each tower forward received (so an image encoded once
    for 8 rollouts is charged once), times 3 for passes with a backward (vision_forward_flops).
    """
    forward = language_forward_flops(step, params)
    executed = passes * forward + step.get("vision_flops", 0)
    return executed + (forward + step.get("vision_grad_forward", 0) if recompute else 0)


def device_peak_tflops(device: torch.device, override: float | None, dtype: torch.dtype = torch.float32
                       ) -> tuple[float | None, str]:
    """The MFU denominator and where it comes from: `override`; on a GPU, the card's dense bf16 peak
    (PEAK_BF16_TFLOPS); on the CPU, which has no datasheet figure here, the best of 5 timed 1024^3 matrix
    products in `dtype` (the weights' dtype) on the threads the bench uses."""
    if override:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = next(((key, tflops) for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
        return (found[1], f"{name}: dense bf16 datasheet peak") if found else (None, f"{name}: peak unknown")
    return _cpu_peak_tflops(dtype, torch.get_num_threads())


@functools.cache
def _cpu_peak_tflops(dtype: torch.dtype, threads: int) -> tuple[float, str]:
    """Measured once per dtype and thread count in a process, so every variant of a run shares it."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best / 1e12, f"CPU: measured {str(dtype).removeprefix('torch.')} matmul, {threads} thread(s)"


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), "memory_kind": "cuda_allocated"}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return {"peak_memory_bytes": int(line.split()[1]) * 1024, "memory_kind": "process_peak_rss"}
    return {"peak_memory_bytes": None, "memory_kind": None}


def summarize(steps: list[dict], params: dict, beta: float, peak_tflops: float | None,
              recompute: bool = False) -> dict:
    """Medians over the measured steps, and the throughput and FLOP utilisations they give: MFU (FLOPs
    the algorithm needs, needed_flops) and the executed-FLOPs utilisation (step_flops), both over the
    same peak."""
    median = {key: statistics.median(step[key] for step in steps) for key in steps[0]}
    # generation + reference (when beta != 0) + training (3 forward-equivalents) + old log-probs when computed
    passes = 1 + (beta != 0) + 3 + (median["old_logps"] > 0)
    flops = needed_flops(median, params, passes)
    executed = step_flops(median, params, passes, recompute=recompute)
    step_s, gen_s = median["step_s"], median["generation"]
    return {
        **{key: median[key] for key in ("step_s", "cpu_s", *PHASES, "other", "rope_index")},
        **{key: int(median[key]) for key in COUNTS},
        "rollouts_per_s": median["rollouts"] / step_s,
        "generated_tokens_per_s": median["completion_tokens"] / step_s,
        "generation_rollouts_per_s": median["rollouts"] / gen_s,
        "generation_tokens_per_s": median["completion_tokens"] / gen_s,
        "step_times_s": [step["step_s"] for step in steps],
        "tflop_per_step": flops / 1e12,
        "executed_tflop_per_step": executed / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / (peak_tflops * 1e12) if peak_tflops else None,
        "executed_utilization": executed / step_s / (peak_tflops * 1e12) if peak_tflops else None,
    }


def run_variant(variant: Variant, recipe: dict, *, model_dir: Path, dataset: Path, prompts: int, generations: int,
                completion_length: int, steps: int, warmup: int, peak_tflops: float | None = None) -> dict:
    """Train warmup + steps optimizer steps of `recipe` as `variant` and summarise the measured steps."""
    result = {"variant": variant.spec, "style": variant.style}
    warmup = warmup if variant.warmup is None else variant.warmup
    steps = steps if variant.steps is None else variant.steps
    if variant.overrides.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        return {**result, "skipped": "liger-kernel is not installed"}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        fields = {
            **recipe,
            **PRECISIONS.get(variant.precision, {}),
            **variant.overrides,
            **variant.batch_fields(prompts, generations),
            "model_name_or_path": str(model_dir),
            "dataset_name": str(dataset),
            "num_generations": generations,
            # Random weights would stop at random lengths: pin every completion to the same length.
            "max_completion_length": completion_length,
            "generation_kwargs": {"min_new_tokens": completion_length},
            "max_steps": warmup + steps,
            "output_dir": str(Path(tmp) / "out"),
            "save_strategy": "no",
            "report_to": "none",
            "logging_steps": 1,
            "disable_tqdm": True,
            "metrics_port": 0,
            "offline_bootstrap": False,
            "auto_resume": False,
            "log_completions": False,
        }
        fields.pop("deepspeed", None)  # one process: no ZeRO sharding to measure
        config = Path(tmp) / "recipe.yaml"
        config.write_text(yaml.safe_dump(fields))
        script_args, training_args, model_args = parse_args(["--config", str(config)])
        trainer = build_trainer(script_args, training_args, model_args)
        if variant.precision == "bf16":
            optimizer_cls, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
            if not issubclass(optimizer_cls, torch.optim.AdamW):
                raise ValueError(f"variant {variant.spec}: precision=bf16 keeps fp32 masters for AdamW, not "
                                 f"{optimizer_cls.__name__}")
            masters = {id(p): p.detach().clone() for p in trainer.model.parameters() if p.requires_grad}
            trainer.model.to(torch.bfloat16)  # the parameters stay the same objects, their data bf16
            if trainer.ref_model is not None:
                trainer.ref_model.to(torch.bfloat16)
            trainer.optimizer_cls_and_kwargs = (MasterWeightAdamW, {**optimizer_kwargs, "masters": masters})
        device = trainer.accelerator.device
        timer = PhaseTimer(device)
        trainer.add_callback(timer)
        params = parameter_split(trainer.model)
        timer.instrument(trainer, variant.style, params)
        settings = {key: fields.get(key) for key in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
            "gradient_checkpointing", "use_liger_kernel", "bf16", "dtype", "beta", *LEVERS.values())}
        settings["attn_implementation"] = trainer.model.config._attn_implementation
        settings["precision"] = variant.precision or "recipe"
        settings["master_weights"] = "fp32" if variant.precision == "bf16" else None
        peak, peak_source = device_peak_tflops(device, peak_tflops, next(trainer.model.parameters()).dtype)
        try:
            _reset_peak_memory(device)
            trainer.train()
            memory = _peak_memory(device)
        finally:
            trainer.accelerator.free_memory()
            del trainer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    measured = timer.steps[warmup:]
    if not measured:
        raise RuntimeError(f"variant {variant.spec}: no measured steps (warmup {warmup}, steps {steps})")
    return {**result, "warmup": warmup, "measured_steps": len(measured), "settings": settings, "parameters": params,
            **memory, "peak_tflops": peak, "peak_source": peak_source,
            "summary": summarize(measured, params, training_args.beta, peak,
                                 recompute=bool(training_args.gradient_checkpointing)),
            "steps": timer.steps}
