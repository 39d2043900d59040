"""The design rules (demo/design.py) pick what docs/demo.md says they pick, from validation runs only."""

from __future__ import annotations

import json

import pytest

from demo.design import choose_arm, choose_pretraining, main


def _stat(mean, lo, hi):
    return {"mean": mean, "ci95": [lo, hi], "values": []}


def _run(sft_answers, start=(0, -5, 5), sft_cot=(0, -5, 5)):
    return {"sft_answers": _stat(*sft_answers), "start": _stat(*start), "sft_cot": _stat(*sft_cot)}


def test_pretraining_prefers_out_when_it_clears_the_target():
    clears, short = _run((12, 2, 22)), _run((9, 1, 17))
    assert choose_pretraining(clears, _run((30, 20, 40))) == "out"
    assert choose_pretraining(short, clears) == "in"  # out misses +10, in clears it
    assert choose_pretraining(_run((12, -1, 25)), _run((11, -2, 24))) == "out"  # neither clears: larger mean
    assert choose_pretraining(_run((3, -1, 7)), _run((8, -2, 18))) == "in"


def test_arm_needs_an_interval_above_zero_then_the_larger_gain_over_the_start():
    study, verbal = _run((12, 2, 22), start=(1, -3, 5)), _run((8, 1, 15), start=(6, -1, 13))
    assert choose_arm(study, verbal) == "verbal"  # both eligible: larger GRPO minus start
    assert choose_arm(study, _run((20, -1, 41), start=(30, 20, 40))) == "study"  # verbal not eligible
    assert choose_arm(_run((5, -3, 13)), _run((4, -9, 17))) == "study"  # none eligible: larger GRPO minus SFT
    assert choose_arm(_run((5, -3, 13)), _run((6, -9, 21))) == "verbal"


def _summary(tmp_path, name, split, gain):
    out = tmp_path / name
    out.mkdir()
    head = {"prompt": "cot", "grpo_minus_start_points": _stat(gain, gain - 1, gain + 1),
            "grpo_minus_sft_answers_points": _stat(gain, gain - 1, gain + 1),
            "grpo_minus_sft_cot_points": _stat(gain, gain - 1, gain + 1)}
    (out / "summary.json").write_text(json.dumps({"ood_split": split, "headline": [head]}))
    return str(out)


def test_the_rules_read_validation_runs_and_refuse_a_heldout_one(tmp_path, capsys):
    assert main(["arm", _summary(tmp_path, "a", "validation", 3.0), _summary(tmp_path, "b", "validation", 5.0)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "arm: verbal"
    held = _summary(tmp_path, "c", "heldout", 50.0)
    assert main(["pretraining", _summary(tmp_path, "d", "validation", 1.0), held]) == 2
    assert "scored 'heldout'; the design rules read validation runs only" in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["pretraining", "arm"])
def test_a_missing_run_is_named(tmp_path, capsys, rule):
    assert main([rule, str(tmp_path / "nowhere"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere/summary.json" in capsys.readouterr().err


def test_the_findings_say_shown_only_with_the_interval_above_zero():
    from demo.report import findings

    def summary(start, sft):
        return {"ood_split": "heldout", "headline": [
            {"prompt": "cot", "grpo_minus_start_points": _stat(*start), "grpo_minus_sft_answers_points": _stat(*sft),
             "grpo_minus_sft_cot_points": _stat(0, -1, 1)}]}

    first, second = findings(summary((4.0, -2.0, 10.0), (19.1, 6.3, 31.9)))
    assert first == ("GRPO above its start on the held-out (SuperCLEVR-like) split (R1-V's headline): not shown, "
                     "+4.0 [-2.0, +10.0] points.")
    assert second.startswith("GRPO above SFT on the same rows there (R1-V's RL-vs-SFT finding): shown, +19.1 [+6.3, ")
    assert findings(summary((12.0, 0.5, 23.5), (1.0, -3.0, 5.0)))[0].endswith("shown, +12.0 [+0.5, +23.5] points.")
    assert ": not shown, +1.0" in findings(summary((12.0, 0.5, 23.5), (1.0, -3.0, 5.0)))[1]
