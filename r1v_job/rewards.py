"""Verifiable rewards for counting, in TRL's reward-function form, and the registry recipes name them by.

Each function takes `completions` (strings, or chat messages `[{"role": "assistant", "content": ...}]`)
and the dataset's `solution` column (e.g. "<answer> 3 </answer>") and returns one float per completion.
TRL passes every dataset column as a keyword argument, row-aligned with `completions`, so each
completion is scored against its own prompt's solution however many prompts share a batch.
"""

from __future__ import annotations

import importlib
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


def tag_count_reward(completions, **kwargs) -> list[float]:
    """0.25 for each of <think>, </think>, <answer>, </answer> that appears exactly once (open-r1's
    partial-format shaping). A learning signal before any completion has the whole format: the
    smoke recipe's tiny random model never earns format_reward or accuracy_reward, so without it
    every advantage is 0 and a smoke run leaves the weights where they started."""
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    return [sum(0.25 for tag in tags if completion_text(c).count(tag) == 1) for c in completions]


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "format_reward": format_reward,
    "accuracy_reward": accuracy_reward,
    "accuracy_reward_r1v": accuracy_reward_r1v,
    "tag_count_reward": tag_count_reward,
}


class RewardError(ValueError):
    """A `reward_funcs` entry names no reward function; the message names the entry."""


def _import_reward(spec: str) -> Callable[..., list[float]]:
    """`my_pkg.rewards:fn` (module:function, as entry points write it) for rewards outside the library:
    the module is imported from sys.path, so users add rewards without forking the project."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(f"reward_funcs: {spec!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"reward_funcs: {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    """Reward functions by registry name or `module:function` import path, in order."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise RewardError(f"reward_funcs: {names!r}: must be a non-empty list, e.g. [accuracy_reward, format_reward]")
    unknown = [n for n in names if not isinstance(n, str) or (":" not in n and n not in REWARD_FUNCS)]
    if unknown:
        raise RewardError(f"reward_funcs: unknown {unknown}; known rewards are {sorted(REWARD_FUNCS)}, "
                          "or give one by import path as my_pkg.rewards:fn")
    return [_import_reward(n) if ":" in n else REWARD_FUNCS[n] for n in names]
