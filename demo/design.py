"""The design rules of the demo, written down before the validation runs they read (docs/demo.md,
"Design choices"), as code so that anyone can rerun them on the runs' summaries:

    python -m demo.design pretraining OUT_OUT OUT_IN    which Instruct scenes: OOD families out or in
    python -m demo.design arm OUT_STUDY OUT_VERBAL       which GRPO arm

Each OUT is a `python -m demo --split validation` run's folder. Only the validation split's
figures (`cot`, means and 95% intervals over seeds) enter; a run on the held-out split is refused.

- pretraining: "out" (no leak of the scored families into pretraining) if its GRPO minus SFT on
  answers is >= +10 points with the interval above 0; else "in" if that holds for "in"; else the one
  with the larger GRPO minus SFT on answers ("out" on a tie).
- arm: the arms whose GRPO minus SFT on answers has its interval above 0 are eligible; of those the
  larger GRPO minus start ("study" on a tie); with none eligible, the larger GRPO minus SFT on answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from demo.report import above_zero, interval

TARGET_POINTS = 10.0


def gains(out: Path) -> dict:
    """The validation split's `cot` GRPO-minus figures of one run: {start, sft_answers, sft_cot}:
    {mean, ci95, values}."""
    summary = json.loads((Path(out) / "summary.json").read_text())
    if summary.get("ood_split") != "validation":
        raise ValueError(f"{out}: scored {summary.get('ood_split')!r}; the design rules read validation runs only")
    head = next(h for h in summary["headline"] if h["prompt"] == "cot")
    return {k.removeprefix("grpo_minus_").removesuffix("_points"): v for k, v in head.items() if k != "prompt"}


def _clear(stat: dict, points: float = 0.0) -> bool:
    return stat["mean"] >= points and above_zero(stat)


def choose_pretraining(out_run: dict, in_run: dict) -> str:
    for name, run in (("out", out_run), ("in", in_run)):
        if _clear(run["sft_answers"], TARGET_POINTS):
            return name
    return "in" if in_run["sft_answers"]["mean"] > out_run["sft_answers"]["mean"] else "out"


def choose_arm(study: dict, verbal: dict) -> str:
    eligible = {name: run for name, run in (("study", study), ("verbal", verbal)) if _clear(run["sft_answers"])}
    if len(eligible) == 2:
        return "verbal" if verbal["start"]["mean"] > study["start"]["mean"] else "study"
    if eligible:
        return next(iter(eligible))
    return "verbal" if verbal["sft_answers"]["mean"] > study["sft_answers"]["mean"] else "study"


def _line(name: str, run: dict) -> str:
    return (f"{name}: GRPO minus SFT on answers {interval(run['sft_answers'], signed=True)}, minus start "
            f"{interval(run['start'], signed=True)}, minus CoT-SFT {interval(run['sft_cot'], signed=True)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo.design", description=__doc__.splitlines()[0])
    ap.add_argument("rule", choices=("pretraining", "arm"))
    ap.add_argument("first", type=Path, help="pretraining: the 'out' run; arm: the 'study' run")
    ap.add_argument("second", type=Path, help="pretraining: the 'in' run; arm: the 'verbal' run")
    args = ap.parse_args(argv)
    try:
        first, second = gains(args.first), gains(args.second)
    except (OSError, ValueError, KeyError, StopIteration) as err:
        print(f"demo.design: {err}", file=sys.stderr)
        return 2
    names = ("out", "in") if args.rule == "pretraining" else ("study", "verbal")
    for name, run in zip(names, (first, second)):
        print(_line(name, run))
    choice = choose_pretraining(first, second) if args.rule == "pretraining" else choose_arm(first, second)
    print(f"{args.rule}: {choice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
