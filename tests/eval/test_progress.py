"""The evaluator's progress lines carry a rate and an ETA, per prompt and per model."""

from __future__ import annotations

import logging
import time
import types
from pathlib import Path

from eval_job import evaluate
from eval_job.data import Question
from eval_job.evaluate import evaluate_prompt


class SlowGenerator:
    """Answers each batch after `delay` seconds of the evaluator's clock, always "<answer>3</answer>".
    The clock is a fake one the generator advances: a loaded CI machine cannot change the rate."""

    def __init__(self, delay: float):
        self.delay, self.now = delay, 100.0

    def perf_counter(self) -> float:
        return self.now

    def generate(self, images, questions, template, max_new_tokens):
        self.now += self.delay
        return ["<answer>3</answer>"] * len(images)


def test_each_batch_logs_the_rate_and_the_time_left(caplog, monkeypatch):
    generator = SlowGenerator(0.5)
    monkeypatch.setattr(evaluate, "time", types.SimpleNamespace(perf_counter=generator.perf_counter, time=time.time))
    questions = [Question(line=i, image="x.png", image_path=Path("x.png"), question="How many?", ground_truth=3)
                 for i in range(6)]
    with caplog.at_level(logging.INFO, logger="eval_job"):
        rows, _ = evaluate_prompt(generator, questions, "cot", batch_size=2, max_new_tokens=8,
                                  label="checkpoint-2")
    assert all(r["correct"] for r in rows)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" |")[0] for line in lines] == [f"checkpoint-2 cot: {n}/6 questions" for n in (2, 4, 6)]
    rate = float(lines[0].split("| ")[1].split(" questions/s")[0])
    assert 3 < rate <= 4  # 2 questions in 0.5 s
    assert lines[0].endswith("ETA 0:00:01")  # 4 questions left at ~4 per second
    assert lines[-1].endswith("ETA 0:00:00")


def test_each_scored_model_logs_how_many_are_left_and_when_they_will_be_done(copy_model, questions, tmp_path, caplog):
    from eval_job import cli

    run = copy_model(tmp_path / "run")
    copy_model(run / "checkpoint-1", step=1)
    with caplog.at_level(logging.INFO, logger="eval_job"):
        assert cli.main(["--checkpoints", str(run), "--data", str(questions), "--out", str(tmp_path / "out"),
                         "--max-new-tokens", "2"]) == 0
    lines = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    assert [line.split(" per model")[0].split(", ")[0] for line in lines] == \
        ["checkpoint-1 done (1/2 models", "final done (2/2 models"]
    assert lines[-1].endswith("ETA 0:00:00") and "ETA" in lines[0]
