"""Answer extraction and scoring.

The headline rule is R1-V's strict one: the first `<answer> N </answer>` with N a run of digits,
as an int. Anything else (no tag, a decimal, a negative, words inside the tags, an unclosed tag) is a
parse failure and counts as wrong. It is the rule behind R1-V's published 48.0% / 82.5%, so scores
stay comparable; parse failures are counted separately so a format collapse is visible.

The `direct` prompt asks for a bare number, which the strict rule could never parse, so it is scored
by the first number in the output instead (`extract_number`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# First match wins (re.search), as in R1-V's evaluation script.
ANSWER_PATTERN = re.compile(r"<answer>\s*(\d+)\s*</answer>")


def extract_answer(text: str) -> int | None:
    """The integer inside the first `<answer>...</answer>`, or None when the rule cannot parse it."""
    match = ANSWER_PATTERN.search(text)
    return int(match.group(1)) if match else None


# The first number, sign and decimals included so that "-3" and "3.5" are not read as 3.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_number(text: str) -> int | None:
    """The first number in `text` when it is a non-negative integer (a bare "4", "4.", "There are 4
    items"); None when there is no number or the first one is negative or fractional."""
    match = _NUMBER.search(text)
    if not match or "." in match.group() or match.group().startswith("-"):
        return None
    return int(match.group())


# How each prompt's answers are read: the tag rule for the prompts that ask for tags.
RULES = {"cot": extract_answer, "train": extract_answer, "direct": extract_number}


@dataclass(frozen=True)
class Score:
    correct: int
    total: int
    parse_failures: int

    @property
    def accuracy(self) -> float:
        """Correct answers over all questions (0..1); unparseable outputs count as wrong."""
        return self.correct / self.total if self.total else 0.0


def score(pairs: Iterable[tuple[str, int]], extract: Callable[[str], int | None] = extract_answer) -> Score:
    """Score (model_output, ground_truth) pairs; `extract` defaults to the strict rule."""
    correct = total = failures = 0
    for output, truth in pairs:
        total += 1
        answer = extract(output)
        if answer is None:
            failures += 1
        elif answer == truth:
            correct += 1
    return Score(correct=correct, total=total, parse_failures=failures)
