"""The start model ("Instruct"): a random-init tiny Qwen2-VL trained on broad non-counting rows
mixed with counting rows (demo.sft.instruct_rows) until a rule on training-distribution data says
it counts.

The rule sees only the dev split, drawn like the warm-up scenes (CLEVR-like): every `every`
optimizer steps the live model answers the dev questions greedily under R1-V's eval prompt, and the
warm-up ends `margin` steps after the first check whose accuracy reaches `threshold`. A warm-up
that reaches its step budget first is an error. The held-out (SuperCLEVR-like) split does not
exist yet when this runs (demo/pipeline.py draws it afterwards), and tests/demo checks that nothing
here opens it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import TrainerCallback

from eval_job.data import read_questions
from eval_job.evaluate import evaluate_prompt
from eval_job.generate import Generator

logger = logging.getLogger(__name__)
RULE_FILE = "start_rule.json"


@dataclass(frozen=True)
class StartRule:
    every: int = 25  # optimizer steps between dev checks
    threshold: float = 0.9  # dev accuracy (greedy, R1-V's strict rule) that ends the warm-up
    margin: int = 0  # steps trained after the threshold is crossed
    prompt: str = "cot"  # R1-V's eval prompt
    stop: bool = True  # False: train to the budget and record every check (the warm-up trials of docs/demo-history.md)


class LiveGenerator(Generator):
    """eval_job's greedy Generator around a model that is still training (no reload from disk)."""

    def __init__(self, model, processor):  # replaces the loading constructor only
        self.device, self.model, self.processor = model.device, model, processor


class DevCheck(TrainerCallback):
    """Scores the live model on the dev questions every `rule.every` steps; ends the run per the rule."""

    def __init__(self, dev_jsonl: Path, rule: StartRule, batch_size: int = 64, max_new_tokens: int = 32):
        self.questions, _ = read_questions(dev_jsonl)
        self.rule, self.batch_size, self.max_new_tokens = rule, batch_size, max_new_tokens
        self.checks: list[dict] = []
        self.crossed_at: int | None = None

    def accuracy(self, model, processor) -> float:
        tokenizer = processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation appends on the right
        was_training = model.training
        model.eval()
        try:
            rows, _ = evaluate_prompt(LiveGenerator(model, processor), self.questions, self.rule.prompt,
                                      self.batch_size, self.max_new_tokens)
        finally:
            tokenizer.padding_side = side
            model.train(was_training)
        return sum(r["correct"] for r in rows) / len(rows)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if self.crossed_at is None and step % self.rule.every == 0:
            acc = self.accuracy(model, processing_class)
            self.checks.append({"step": step, "dev_accuracy": acc})
            logger.info("Instruct step %d: dev accuracy (%s) %.1f%%", step, self.rule.prompt, 100 * acc)
            if acc >= self.rule.threshold:
                self.crossed_at = step
        elif not self.rule.stop and step % self.rule.every == 0:
            self.checks.append({"step": step, "dev_accuracy": self.accuracy(model, processing_class)})
        if self.rule.stop and self.crossed_at is not None and step >= self.crossed_at + self.rule.margin:
            if step > self.crossed_at:  # the start's own dev score, past the crossing
                self.checks.append({"step": step, "dev_accuracy": self.accuracy(model, processing_class)})
            control.should_training_stop = True
        return control


def build_start_model(rows: list[dict], dev_jsonl: Path, out: Path, init: Path, size, settings, rule: StartRule,
                      model_seed: int = 0) -> dict:
    """Random-init tiny Qwen2-VL (`init`) trained on `rows` (demo.sft.instruct_rows) into `out` until
    `rule` stops it; writes and returns out/start_rule.json (the rule, every check, the step it
    stopped at)."""
    from demo.sft import sft
    from r1v_job.tiny import save_tiny_model

    save_tiny_model(init, seed=model_seed, **size.kwargs())
    check = DevCheck(dev_jsonl, rule)
    sft(init, rows, out, settings,
        save_steps=rule.every if not rule.stop else None, callbacks=[check])
    steps = json.loads((out / "sft_log.json").read_text())
    last = max((e.get("step", 0) for e in steps), default=0)
    info = {"rule": asdict(rule), "budget_steps": settings.max_steps, "checks": check.checks,
            "crossed_at": check.crossed_at, "stopped_at": last}
    (out / RULE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if rule.stop and check.crossed_at is not None and last < check.crossed_at + rule.margin:
        raise RuntimeError(f"the warm-up crossed {100 * rule.threshold:.0f}% dev accuracy at step "
                           f"{check.crossed_at} but "
                           f"its budget ({settings.max_steps} steps) ended before the {rule.margin}-step margin: raise "
                           "DemoConfig.warmup.max_steps")
    if rule.stop and check.crossed_at is None:
        best = max(check.checks, key=lambda c: c["dev_accuracy"], default={"step": 0, "dev_accuracy": 0.0})
        raise RuntimeError(f"the warm-up used its whole budget ({settings.max_steps} steps) without reaching "
                           f"{100 * rule.threshold:.0f}% dev accuracy (best {100 * best['dev_accuracy']:.1f}% at step "
                           f"{best['step']}): raise DemoConfig.warmup.max_steps or lower StartRule.threshold")
    return info
