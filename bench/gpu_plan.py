"""What `bash bench/gpu.sh` measures on the GPU it finds: the variants whose estimated peak memory fits.

The lent machines are one H100 (80 GB) or one H200 (141 GB). The seed recipe's step (16 prompts x 8
rollouts of the Qwen2-VL-2B architecture, micro-batches of 16) is estimated per variant from the GPU
peaks measured on one H200 at commit b9a2d60 (bf16 weights, bf16 AdamW states, no levers: 40.8 GiB at
micro-batch 8, 59.1 GiB at 16, 35.4 GiB at 128 with gradient checkpointing), and each variant runs at
the largest micro-batch of its list that fits the free memory with some headroom. What fits nowhere is
listed as skipped, with its estimate. `--dry-run` plans for an assumed free memory and clamps the
micro-batches to the step, so the same plan runs on the tiny model on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 2**30
PARAMS_2B = 2.21e9  # Qwen2-VL-2B-Instruct (bench/configs/qwen2vl_2b.json)
HEADROOM = 0.92  # of the free memory: the allocator's fragmentation and the CUDA context's growth

# Activations per micro-batch, from the b9a2d60 peaks less the static 16.5 GiB (bf16 weights, gradients
# and AdamW states) + 4.1 GiB (bf16 reference model): 1.9 GiB + 2.29 GiB per rollout, each rollout's
# image encoded with it. Split by the arithmetic of what a layer keeps for backward (748 patches x 32
# layers of width 1280 against ~309 tokens x 28 layers of width 1536 with a wider MLP): ~60% the vision
# tower's, per image encoded, ~40% the decoder's, per rollout.
FIXED_GIB = 1.9
VISION_GIB_PER_IMAGE = 0.6 * 2.29
TEXT_GIB_PER_ROLLOUT = 0.4 * 2.29
CHECKPOINTED_GIB_PER_ROLLOUT = (35.4 - 16.5 - 4.1) / 128  # gradient checkpointing keeps layer inputs only
AUTOCAST_ACTIVATIONS = 1.1  # fp32 weights under autocast: norms and residuals stay fp32

# Bytes per parameter: policy weights, gradients, fp32 masters, AdamW's two fp32 states; the reference.
STATIC_BYTES = {
    "bf16": 2 + 2 + 4 + 8 + 2,
    # fp32 weights, gradients and states, the bf16 weight copies autocast keeps for backward, fp32 reference
    "fp32-autocast": 4 + 4 + 8 + 2 + 4,
}


def images_per_micro_batch(micro_batch: int, generations: int, levers: str) -> float:
    """Images the vision tower encodes for a micro-batch of rollouts: every rollout's copy without dedup,
    its whole groups' images with dedup + group, ~10 of 16 with dedup alone (TRL's single-rollout shuffle
    of 16 prompts x 8: 16 x (1 - (7/8)^mb) distinct images expected, capped)."""
    names = ({"dedup", "group"} if levers in ("default", "all") else set() if levers == "none"
             else set(levers.split("+")))
    if "dedup" not in names:
        return micro_batch
    if "group" in names:
        return max(1, micro_batch // generations)
    return min(micro_batch, 16 * (1 - (1 - 1 / generations) ** micro_batch))


def needs_gib(micro_batch: int, generations: int, levers: str, precision: str, checkpointing: bool = False) -> float:
    """Estimated peak GPU memory of one variant on the 2B model, GiB."""
    static = PARAMS_2B * STATIC_BYTES[precision] / GIB
    if checkpointing:
        activations = CHECKPOINTED_GIB_PER_ROLLOUT * micro_batch
    else:
        activations = (VISION_GIB_PER_IMAGE * images_per_micro_batch(micro_batch, generations, levers)
                       + TEXT_GIB_PER_ROLLOUT * micro_batch)
    scale = AUTOCAST_ACTIVATIONS if precision == "fp32-autocast" else 1.0
    return static + FIXED_GIB + activations * scale


@dataclass
class Candidate:
    """One row of the plan: `ours` or `r1v`, its levers, precision and micro-batches to try, largest first."""

    what: str  # the row's meaning in the table
    style: str = "ours"
    levers: str = "default"  # "default": the recipe's defaults; else a levers= value
    precision: str = "bf16"
    micro_batches: tuple[int, ...] = (16,)
    checkpointing: bool = False
    warmup: int | None = None
    steps: int | None = None

    def spec(self, micro_batch: int, quick: bool) -> str:
        options = [] if self.style == "r1v" else [f"mb={micro_batch}"]
        options += [] if self.levers == "default" else [f"levers={self.levers}"]
        options += [f"precision={self.precision}"] + (["gc"] if self.checkpointing else [])
        warmup, steps = (0, 1) if quick else (self.warmup, self.steps)
        options += [f"{k}={v}" for k, v in (("warmup", warmup), ("steps", steps)) if v is not None]
        return f"{self.style}:{','.join(options)}"


# In order of importance: a run cut short by the time budget keeps the first rows.
CANDIDATES = [
    Candidate("the recipe's defaults: dedup, group, images, pixels, rope (bf16 weights, fp32 masters)"),
    Candidate("R1-V's style: the baseline of 'vs r1v'", style="r1v", levers="none", micro_batches=(8,), warmup=0,
              steps=1),
    Candidate("TRL as before the levers: the baseline of 'vs before'", levers="none", micro_batches=(16, 8, 4)),
    Candidate("+ the compiled decode; its compile in 2 unmeasured warm-up steps", levers="all", warmup=2),
    Candidate("the defaults without the two newest levers (pixels, rope)", levers="dedup+group+images"),
    Candidate("... + pixels sent once", levers="dedup+group+images+pixels"),
    Candidate("... + M-RoPE positions once", levers="dedup+group+images+rope"),
    Candidate("the defaults with fp32 weights under bf16 autocast (the seed recipe without DeepSpeed)",
              precision="fp32-autocast", micro_batches=(16, 8)),
    Candidate("the whole step in one micro-batch; without checkpointing it fits no lent GPU",
              micro_batches=(128,), checkpointing=True),
    Candidate("vision dedup alone", levers="dedup", micro_batches=(16, 8)),
    Candidate("dedup + whole-group micro-batches", levers="dedup+group"),
    Candidate("CPU image work once, alone", levers="images", micro_batches=(16, 8)),
    Candidate("the compiled decode alone", levers="compile", warmup=2),
]


@dataclass
class Plan:
    variants: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # spec -> what the row means, with its estimate
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row, why)
    baseline: str | None = None
    before: str | None = None


def plan(free_gib: float, rollouts: int = 128, generations: int = 8, quick: bool = False) -> Plan:
    """The rows that fit `free_gib` of GPU memory, each at its largest micro-batch that fits. `quick`
    (the dry run): one step per row, micro-batches clamped to the step's `rollouts`."""
    result = Plan()
    budget = free_gib * HEADROOM
    for candidate in CANDIDATES:
        sizes = candidate.micro_batches if candidate.style == "ours" else (generations,)
        fits = [(mb, needs_gib(mb, generations, candidate.levers, candidate.precision, candidate.checkpointing))
                for mb in sizes]
        chosen = next(((mb, need) for mb, need in fits if need <= budget), None)
        if chosen is None:
            mb, need = fits[-1]
            result.skipped.append((candidate.spec(mb, quick=False),
                                   f"needs ~{need:.0f} GiB, {free_gib:.0f} GiB free ({candidate.what})"))
            continue
        mb, need = chosen
        spec = candidate.spec(min(mb, rollouts) if quick else mb, quick)
        result.variants.append(spec)
        result.notes[spec] = f"{candidate.what}; ~{need:.0f} GiB estimated"
        if candidate.style == "r1v" and result.baseline is None:
            result.baseline = spec
        if candidate.levers == "none" and candidate.style == "ours" and result.before is None:
            result.before = spec
    return result
