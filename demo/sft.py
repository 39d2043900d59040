"""Supervised training with TRL's SFTTrainer: the Instruct stage that makes the start model, and the
SFT controls that train the start on the very rows GRPO trained on.

The Instruct stage teaches a random-init tiny Qwen2-VL (r1v_job.tiny) to look at many kinds of
objects (non-counting questions over a broad family of shapes and colours) and R1-V's answer format
and counting, so that it plays Qwen2-VL-2B-Instruct: <think>...</think><answer>N</answer> under
R1-V's prompts (the thinking per the arm), a bare <answer>N</answer> under the direct one. When it
stops is demo/start.py's rule.

The controls ("more SFT instead of RL"):
- "answers": the dataset's own `solution` text (CLEVR-70k: "<answer> 3 </answer>"), all a
  practitioner has to fine-tune on, as CLEVR-70k holds no reasoning.
- "cot": R1-V's CoT-SFT. Its traces were written by a stronger model (DeepSeek-R1) from each CLEVR
  scene's text description; here a teacher writes them from each training scene's objects
  (r1v_job.synthetic's scene descriptions): the objects' sizes, colours and shapes, then the count.
  They name the training scenes' objects, which is what does not carry over to new ones.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from r1v_common.prompts import EVAL_PROMPTS, TRAIN_PROMPT
from r1v_job.synthetic import read_jsonl

# The start's answer formats. The thinking is one short sentence: a tiny model pays for every
# generated token at every rollout and evaluation, and the sentence still makes the answer a
# "reasoned" one that GRPO's format reward can check.
THINK_ANSWER = "<think>There are {n} objects.</think><answer>{n}</answer>"
# The verbal arm's answer (docs/demo.md, "Design"): the thinking enumerates the objects one number
# each, whatever they are, then the answer states the count, so that a count is the last number of
# a procedure that runs over what the model sees, not a guess at a total.
VERBAL_ANSWER = "<think>{enumeration}</think><answer>{n}</answer>"
ARMS = ("study", "verbal")
# A bare question ("... Answer: ", R1-V's direct prompt) gets a bare tagged answer, as an
# Instruct model answers a bare question without explaining itself.
ANSWER_ONLY = "<answer>{n}</answer>"
# The thinking of the non-counting Instruct rows: one short sentence, as for counting. Its first
# word differs from the CoT teacher's traces' ("<think>I see ..."): a shared first word lets a start
# fine-tuned on the traces slide into this row's answer ("yes") on counting questions.
INSTRUCT_THINK = "<think>Looking at the objects.</think><answer>{answer}</answer>"

CONTROL_KINDS = ("answers", "cot")
_COUNT = re.compile(r"\d+")


@dataclass(frozen=True)
class ModelSize:
    """The tiny Qwen2-VL's dimensions (r1v_job.tiny.save_tiny_model keywords)."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    # The vision tower is what limits counting; 64 dims learn it too slowly for the demo's warm-up
    # (docs/demo-history.md).
    vision_dim: int = 128
    vision_depth: int = 2

    def kwargs(self) -> dict:
        return dict(hidden_size=self.hidden_size, layers=self.layers, heads=self.heads,
                    vision_dim=self.vision_dim, vision_depth=self.vision_depth)


@dataclass(frozen=True)
class SFTSettings:
    learning_rate: float = 1e-3
    batch_size: int = 16
    epochs: float = 1.0
    max_steps: int = -1  # >0 overrides epochs (and is the learning-rate schedule's horizon)
    seed: int = 0
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0


def count_of(solution: str) -> int:
    """The count in a CLEVR-70k `solution` ("<answer> 3 </answer>")."""
    return int(_COUNT.search(solution).group())


def _row(image: str, problem: str, template: str, completion: str) -> dict:
    return {"image": image,
            "prompt": [{"role": "user", "content": template.format(Question=problem)}],
            "completion": [{"role": "assistant", "content": completion}]}


def start_answer(template: str, n: int, arm: str = "study") -> str:
    if template == EVAL_PROMPTS["direct"]:
        return ANSWER_ONLY.format(n=n)
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: expected one of {ARMS}")
    if arm == "verbal":
        return VERBAL_ANSWER.format(enumeration=" ".join(str(i) for i in range(1, n + 1)), n=n)
    return THINK_ANSWER.format(n=n)


_TEMPLATES = (TRAIN_PROMPT, EVAL_PROMPTS["cot"], EVAL_PROMPTS["direct"])
_TEMPLATE_WEIGHTS = (0.4, 0.4, 0.2)


def warmup_rows(train_jsonl: Path, seed: int = 0, arm: str = "study") -> list[dict]:
    """Counting rows: each scene with its count, under a prompt drawn from R1-V's training,
    evaluation and direct prompts (an Instruct model follows all three phrasings), answered in the
    arm's format."""
    rng = random.Random(f"warmup-prompts-{seed}")
    rows = []
    for r in read_jsonl(train_jsonl):
        template = rng.choices(_TEMPLATES, weights=_TEMPLATE_WEIGHTS)[0]
        rows.append(_row(str(train_jsonl.parent / r["image"]), r["problem"], template,
                         start_answer(template, count_of(r["solution"]), arm)))
    return rows


def instruct_rows(instruct_jsonl: Path, warmup_jsonl: Path, seed: int = 0, arm: str = "study") -> list[dict]:
    """The start's training rows: the broad non-counting questions (r1v_job.synthetic.INSTRUCT_TASKS)
    under the same prompts, then the counting rows (warmup_rows); SFTTrainer shuffles them."""
    rng = random.Random(f"instruct-prompts-{seed}")
    rows = []
    for r in read_jsonl(instruct_jsonl):
        template = rng.choices(_TEMPLATES, weights=_TEMPLATE_WEIGHTS)[0]
        answer = r["solution"].removeprefix("<answer>").removesuffix("</answer>").strip()
        completion = (ANSWER_ONLY.format(n=answer) if template == EVAL_PROMPTS["direct"]
                      else INSTRUCT_THINK.format(answer=answer))
        rows.append(_row(str(instruct_jsonl.parent / r["image"]), r["problem"], template, completion))
    return rows + warmup_rows(warmup_jsonl, seed, arm)


def teacher_trace(objects: list[dict]) -> str:
    """What the CoT teacher writes from a scene's description: every object by size, colour and
    shape, in the description's order, then the count. E.g. "<think>I see a small red cube and a
    large blue sphere. That makes 2 objects.</think><answer>2</answer>"."""
    named = [f"a {o['size']} {o['colour']} {o['shape']}" for o in objects]
    listing = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    n = len(objects)
    return f"<think>I see {listing}. That makes {n} object{'s' if n != 1 else ''}.</think><answer>{n}</answer>"


def control_rows(train_jsonl: Path, n: int, kind: str) -> list[dict]:
    """The first `n` rows of the GRPO training set under the training prompt, completed per `kind`."""
    if kind not in CONTROL_KINDS:
        raise ValueError(f"unknown SFT control {kind!r}: expected one of {CONTROL_KINDS}")
    rows = read_jsonl(train_jsonl)[:n]
    if kind == "cot":
        described = {s["image"]: s["objects"] for s in read_jsonl(train_jsonl.parent / "scenes.jsonl")}
    out = []
    for r in rows:
        if kind == "answers":
            completion = r["solution"]
        else:
            objects = described[r["image"]]
            if len(objects) != count_of(r["solution"]):  # the description and the label are one scene
                raise ValueError(f"{train_jsonl.parent / 'scenes.jsonl'}: {r['image']} lists {len(objects)} objects "
                                 f"but its solution is {r['solution']!r}")
            completion = teacher_trace(objects)
        out.append(_row(str(train_jsonl.parent / r["image"]), r["problem"], TRAIN_PROMPT, completion))
    return out


def sft(model_dir: str | Path, rows: list[dict], out: str | Path, settings: SFTSettings,
        save_steps: int | None = None, callbacks: list | None = None) -> Path:
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
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor,
                         callbacks=callbacks)
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out))
    processor.save_pretrained(str(out))
    (out / "sft_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return out


def supervised_control(start_dir: str | Path, train_jsonl: Path, n_examples: int, kind: str, out: str | Path,
                       settings: SFTSettings, save_steps: int | None = None) -> Path:
    return sft(start_dir, control_rows(Path(train_jsonl), n_examples, kind), out, settings, save_steps)
