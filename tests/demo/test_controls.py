"""The two supervised controls train on GRPO's rows: one on the dataset's own answers, one on the
same answers written into the start model's reasoning template."""

from __future__ import annotations

import json

import pytest

from demo.warmup import control_rows
from r1v_job.prompts import TRAIN_PROMPT
from r1v_job.rewards import accuracy_reward, format_reward


@pytest.fixture
def train_jsonl(tmp_path):
    rows = [{"image": f"images/s{i}.png", "problem": "How many items are there in the image?",
             "solution": f"<answer> {n} </answer>"} for i, n in enumerate([3, 1, 6, 2])]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _completions(rows):
    return [r["completion"][0]["content"] for r in rows]


def test_answers_control_fine_tunes_on_the_dataset_solution_verbatim(train_jsonl):
    rows = control_rows(train_jsonl, 3, "answers")
    assert _completions(rows) == ["<answer> 3 </answer>", "<answer> 1 </answer>", "<answer> 6 </answer>"]
    assert rows[0]["prompt"][0]["content"] == TRAIN_PROMPT.format(Question="How many items are there in the image?")
    assert rows[1]["image"] == str(train_jsonl.parent / "images/s1.png")


def test_traces_control_writes_the_same_answers_into_the_reasoning_template(train_jsonl):
    rows = control_rows(train_jsonl, 4, "traces")
    completions = _completions(rows)
    # Every trace passes R1-V's format rule and earns the accuracy reward against its own row.
    assert format_reward(completions) == [1.0] * 4
    solutions = [json.loads(line)["solution"] for line in train_jsonl.read_text().splitlines()]
    assert accuracy_reward(completions, solution=solutions) == [1.0] * 4
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in control_rows(train_jsonl, 4, "answers")]


def test_unknown_control_is_named(train_jsonl):
    with pytest.raises(ValueError, match="unknown SFT control 'labels'"):
        control_rows(train_jsonl, 2, "labels")
