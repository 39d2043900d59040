"""R1-V's strict answer rule: the first `<answer> N </answer>` with N a run of digits, as an int.

Anything else (no tag, a decimal, a negative, words inside the tags, an unclosed tag) is a parse
failure and counts as wrong. This is the rule behind R1-V's published 48.0% / 82.5%, so the headline
accuracy stays comparable; parse failures are counted separately so a format collapse is visible.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# First match wins (re.search), as in R1-V's evaluation script.
ANSWER_PATTERN = re.compile(r"<answer>\s*(\d+)\s*</answer>")


def extract_answer(text: str) -> int | None:
    """The integer inside the first `<answer>...</answer>`, or None when the rule cannot parse it."""
    match = ANSWER_PATTERN.search(text)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Score:
    correct: int
    total: int
    parse_failures: int

    @property
    def accuracy(self) -> float:
        """Correct answers over all questions (0..1); unparseable outputs count as wrong."""
        return self.correct / self.total if self.total else 0.0


def score(pairs: Iterable[tuple[str, int]]) -> Score:
    """Score (model_output, ground_truth) pairs with the strict rule."""
    correct = total = failures = 0
    for output, truth in pairs:
        total += 1
        answer = extract_answer(output)
        if answer is None:
            failures += 1
        elif answer == truth:
            correct += 1
    return Score(correct=correct, total=total, parse_failures=failures)
