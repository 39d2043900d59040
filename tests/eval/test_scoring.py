"""Scoring: R1-V conformance on its own recorded logs, and the extraction rules' edge cases."""

import json

import pytest

from eval_job.scoring import extract_answer, extract_number, score
from tests.outside import require


@pytest.mark.parametrize("log, published, correct, parse_failures", [
    ("r1v-log-base", 48.0, 96, 45),
    ("r1v-log-grpo100", 82.5, 165, 0),
])
def test_rescoring_r1v_logs_reproduces_published_accuracy(log, published, correct, parse_failures):
    # R1-V's own eval logs at its commit bbbbe3d (tests/outside.py: ../shared, else fetched, else skip).
    data = json.loads(require(log).read_text())
    rows = data["results"]
    result = score((r["model_output"], r["ground_truth"]) for r in rows)
    assert (result.total, result.correct, result.parse_failures) == (200, correct, parse_failures)
    assert round(100 * result.accuracy, 1) == published == data["accuracy"]
    # Row by row, the rule reads exactly what R1-V's own script extracted (None where it failed).
    assert [extract_answer(r["model_output"]) for r in rows] == [r["extracted_answer"] for r in rows]


@pytest.mark.parametrize("text, expected", [
    ("<answer>4</answer>", 4),
    ("<answer> 4 </answer>", 4),
    ("<think>\n I see 3 </think>\n<answer>\n    7\n    </answer>", 7),  # newlines inside the tags
    ("<answer>007</answer>", 7),
    ("<answer>12</answer>", 12),
    ("<answer>2</answer> then <answer>5</answer>", 2),  # the first answer counts
    ("<think>maybe 5? no</think><answer>4</answer>", 4),  # numbers in the thinking are ignored
    ("<answer>5</answer><answer>oops", 5),
    ("<answer>3.0</answer>", None),  # a decimal is not the rule's integer
    ("<answer>-3</answer>", None),
    ("<answer>three</answer>", None),
    ("<answer>about 3</answer>", None),
    ("<answer>3", None),  # unclosed
    ("3", None),  # a bare number has no tag
    ("<ANSWER>3</ANSWER>", None),  # the tags are case sensitive
    ("<answer></answer>", None),
    ("", None),
])
def test_extract_answer_strict_rule(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("4", 4),
    (" 4.", 4),
    ("There are 6 items.", 6),
    ("<answer>8</answer>", 8),
    ("3.5", None),
    ("-2", None),
    ("four", None),
    ("", None),
])
def test_extract_number_for_direct_answers(text, expected):
    assert extract_number(text) == expected


def test_unparseable_output_counts_as_wrong_and_as_parse_failure():
    result = score([("<answer>3</answer>", 3), ("<answer>4</answer>", 3), ("no tags", 3), ("<answer>x</answer>", 1)])
    assert (result.correct, result.total, result.parse_failures) == (1, 4, 2)
    assert result.accuracy == 0.25
