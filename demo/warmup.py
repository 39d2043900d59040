"""Stage 2: the starting model, and the supervised controls.

`build_start_model` writes a random-init Qwen2-VL (r1v_job.tiny) and warms it up with TRL's
SFTTrainer on image + conversational prompt/completion rows in R1-V's answer format, so that it
emits <think>...</think><answer>N</answer> and counts: it plays Qwen2-VL-2B-Instruct.

`supervised_control` is the same supervised training continued from the warmed-up model, on the
very rows GRPO trained on, with their exact answers: the "more SFT instead of RL" baselines, one
on the dataset's answers and one on answers written into the start's reasoning template.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from r1v_job.prompts import EVAL_PROMPTS, TRAIN_PROMPT

# The answer formats the model is taught. The thinking is one short sentence: a tiny model pays
# for every generated token at every rollout and evaluation, and the sentence still makes the
# answer a "reasoned" one that GRPO's format reward can check.
THINK_ANSWER = "<think>There are {n} objects.</think><answer>{n}</answer>"
# A bare question ("... Answer: ", R1-V's direct prompt) gets a bare tagged answer, as an
# Instruct model answers a bare question without explaining itself.
ANSWER_ONLY = "<answer>{n}</answer>"


@dataclass(frozen=True)
class ModelSize:
    """The tiny Qwen2-VL's dimensions (r1v_job.tiny.save_tiny_model keywords)."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    # The vision tower is the bottleneck: with objects placed anywhere, 64 dims had not learned to
    # count after 800 steps and 128 counted about half the scenes by then (docs/demo.md).
    vision_dim: int = 128
    vision_depth: int = 2

    def kwargs(self) -> dict:
        return dict(hidden_size=self.hidden_size, layers=self.layers, heads=self.heads,
                    vision_dim=self.vision_dim, vision_depth=self.vision_depth)


@dataclass(frozen=True)
class SFTSettings:
    learning_rate: float = 3e-3
    batch_size: int = 16
    epochs: float = 1.0
    max_steps: int = -1  # >0 overrides epochs
    seed: int = 0
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0


def _row(image: str, problem: str, template: str, answer: int) -> dict:
    completion = (ANSWER_ONLY if template == EVAL_PROMPTS["direct"] else THINK_ANSWER).format(n=answer)
    return {"image": image,
            "prompt": [{"role": "user", "content": template.format(Question=problem)}],
            "completion": [{"role": "assistant", "content": completion}]}


def warmup_rows(path: Path, seed: int = 0) -> list[dict]:
    """Warm-up rows: each scene with its count, under a prompt drawn from R1-V's training,
    evaluation and direct prompts (an Instruct model follows all three phrasings)."""
    rng = random.Random(f"warmup-prompts-{seed}")
    templates = [TRAIN_PROMPT, EVAL_PROMPTS["cot"], EVAL_PROMPTS["direct"]]
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        template = rng.choices(templates, weights=[0.4, 0.4, 0.2])[0]
        rows.append(_row(str(path.parent / r["image"]), r["problem"], template, r["count"]))
    return rows


# The two supervised controls: what GRPO saw, supervised instead of rewarded.
# - "answers": the dataset's own `solution` text (CLEVR-70k: "<answer> 3 </answer>"), all a
#   practitioner has to fine-tune on, as CLEVR-70k holds no reasoning.
# - "traces": the exact answer written into the start model's own reasoning template, a trace that
#   only exists because the demo wrote the warm-up.
CONTROLS = ("answers", "traces")


def control_rows(train_jsonl: Path, n: int, kind: str) -> list[dict]:
    """The first `n` rows of the GRPO training set in the training prompt, completed per `kind`."""
    if kind not in CONTROLS:
        raise ValueError(f"unknown SFT control {kind!r}: expected one of {CONTROLS}")
    rows = []
    for line in train_jsonl.read_text().splitlines()[:n]:
        r = json.loads(line)
        image = str(train_jsonl.parent / r["image"])
        if kind == "answers":
            rows.append({"image": image,
                         "prompt": [{"role": "user", "content": TRAIN_PROMPT.format(Question=r["problem"])}],
                         "completion": [{"role": "assistant", "content": r["solution"]}]})
        else:
            answer = int(r["solution"].replace("<answer>", "").replace("</answer>", "").strip())
            rows.append(_row(image, r["problem"], TRAIN_PROMPT, answer))
    return rows


def sft(model_dir: str | Path, rows: list[dict], out: str | Path, settings: SFTSettings,
        save_steps: int | None = None) -> Path:
    """Supervised fine-tuning of `model_dir` on `rows` with TRL's SFTTrainer (loss on the completion
    only); saves the model and its processor to `out`, and the trainer's log to out/sft_log.json.
    With `save_steps`, weights-only checkpoints go to out/_trainer/checkpoint-N (for accuracy curves)."""
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    out = Path(out)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="float32", attn_implementation="sdpa")
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    args = SFTConfig(
        output_dir=str(out / "_trainer"),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
        data_seed=settings.seed,
        completion_only_loss=True,
        max_length=None,
        use_cpu=True,
        bf16=False,
        # TRL turns it on by default; on a model this small it only makes each step slower.
        gradient_checkpointing=False,
        logging_steps=5,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_only_model=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    (out / "sft_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return out


def build_start_model(warmup_jsonl: Path, out: str | Path, size: ModelSize = ModelSize(),
                      settings: SFTSettings = SFTSettings(), model_seed: int = 0) -> Path:
    """Random-init tiny Qwen2-VL (out/../init) warmed up on the warm-up rows into `out`."""
    from r1v_job.tiny import save_tiny_model

    out = Path(out)
    init = out.parent / (out.name + "-init")
    save_tiny_model(init, seed=model_seed, **size.kwargs())
    return sft(init, warmup_rows(Path(warmup_jsonl), settings.seed), out, settings)


def supervised_control(start_dir: str | Path, train_jsonl: Path, n_examples: int, kind: str, out: str | Path,
                       settings: SFTSettings, save_steps: int | None = None) -> Path:
    return sft(start_dir, control_rows(Path(train_jsonl), n_examples, kind), out, settings, save_steps)
