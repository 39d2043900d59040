"""Verifiable rewards for counting, in TRL's reward-function form, and the registry recipes name them by.

Each function takes `completions` (strings, or chat messages `[{"role": "assistant", "content": ...}]`)
and the dataset's `solution` column (e.g. "<answer> 3 </answer>") and returns one float per completion.
TRL passes every dataset column as a keyword argument, row-aligned with `completions`, so each
completion is scored against its own prompt's solution however many prompts share a batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from math_verify import parse, verify

# R1-V's format rule, with the DOTALL its first code forgot (multi-line thinking must count).
_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def completion_text(completion) -> str:
    """The text of a completion given as a string or as chat messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content") or ""
        if isinstance(content, list):  # structured content blocks
            content = "".join(block.get("text") or "" for block in content if block.get("type") == "text")
        parts.append(content)
    return "".join(parts)


def answer_tag(text: str) -> str | None:
    """The stripped content of the first <answer>...</answer>, or None without one."""
    match = _ANSWER.search(text)
    return match.group(1).strip() if match else None


def _same_number(predicted: str, gold: str) -> bool:
    """math-verify equivalence ("3.0" equals 3, "\\frac{6}{2}" equals 3); False when either side has
    nothing math-verify can parse."""
    try:
        gold_parsed, predicted_parsed = parse(gold), parse(predicted)
        return bool(gold_parsed) and bool(predicted_parsed) and bool(verify(gold_parsed, predicted_parsed))
    except Exception:  # math-verify raises on some malformed LaTeX; such an answer is simply wrong
        return False


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the whole completion is <think>...</think> then <answer>...</answer>, else 0.0."""
    return [1.0 if _FORMAT.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]


def accuracy_reward(completions, solution, **kwargs) -> list[float]:
    """1.0 when the <answer> tag's content equals the solution's answer, by math-verify.

    Only the answer counts: a number mentioned while thinking earns nothing, and a completion with no
    <answer> tag earns 0.0.
    """
    rewards = []
    for completion, sol in zip(completions, solution, strict=True):
        predicted = answer_tag(completion_text(completion))
        gold = answer_tag(sol) or sol.strip()
        rewards.append(1.0 if predicted and _same_number(predicted, gold) else 0.0)
    return rewards


def accuracy_reward_r1v(completions, solution, **kwargs) -> list[float]:
    """R1-V's accuracy rule exactly, flaw included, for replication studies.

    First math-verify on the *whole* completion against the whole solution (so a right number in the
    thinking pays a wrong answer); failing that, exact string equality of the stripped <answer>
    contents (the whole stripped text where a tag is missing), so "3.0" earns 0 against 3.
    """
    rewards = []
    for completion, sol in zip(completions, solution, strict=True):
        text = completion_text(completion)
        if _same_number(text, sol):
            rewards.append(1.0)
            continue
        predicted = answer_tag(text)
        gold = answer_tag(sol)
        predicted = text.strip() if predicted is None else predicted
        gold = sol.strip() if gold is None else gold
        rewards.append(1.0 if predicted == gold else 0.0)
    return rewards


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "format_reward": format_reward,
    "accuracy_reward": accuracy_reward,
    "accuracy_reward_r1v": accuracy_reward_r1v,
}


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"reward_funcs: unknown {unknown}; known rewards are {sorted(REWARD_FUNCS)}")
    return [REWARD_FUNCS[n] for n in names]
