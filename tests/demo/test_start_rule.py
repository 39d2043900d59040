"""The start model is chosen by a rule on training-distribution data only."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.config import QUICK, with_seed
from demo.scenes import write_ood_split
from demo.sft import warmup_rows
from demo.start import DevCheck, StartRule


class _Scripted(DevCheck):
    """DevCheck with the dev accuracies given, to test when the rule stops."""

    def __init__(self, rule, accuracies):
        self.rule, self.accuracies = rule, list(accuracies)
        self.checks, self.crossed_at = [], None

    def accuracy(self, model, processor):
        return self.accuracies.pop(0)


def _steps(check: DevCheck, last: int) -> int | None:
    for step in range(1, last + 1):
        control = SimpleNamespace(should_training_stop=False)
        check.on_step_end(None, SimpleNamespace(global_step=step), control)
        if control.should_training_stop:
            return step
    return None


def test_warmup_stops_at_the_first_check_over_the_threshold_plus_the_margin():
    check = _Scripted(StartRule(every=10, threshold=0.9, margin=0), [0.2, 0.85, 0.91, 0.5])
    assert _steps(check, 100) == 30
    assert [c["step"] for c in check.checks] == [10, 20, 30]
    check = _Scripted(StartRule(every=10, threshold=0.9, margin=15), [0.2, 0.95, 0.97])
    assert _steps(check, 100) == 35 and check.crossed_at == 20
    # no checks between the crossing and the stop; one at the stop, the start's own dev score
    assert [(c["step"], c["dev_accuracy"]) for c in check.checks] == [(10, 0.2), (20, 0.95), (35, 0.97)]


def test_without_stop_the_rule_records_every_check():
    check = _Scripted(StartRule(every=10, threshold=0.5, stop=False), [0.6, 0.4, 0.7])
    assert _steps(check, 30) is None
    assert [c["dev_accuracy"] for c in check.checks] == [0.6, 0.4, 0.7] and check.crossed_at == 10


def test_a_warmup_that_never_reaches_the_threshold_is_an_error(tmp_path):
    from demo.scenes import write_training_scenes
    from demo.start import build_start_model

    cfg = with_seed(QUICK, 0)
    scenes = write_training_scenes(tmp_path / "scenes", replace(cfg.scenes, instruct=4, warmup=16, dev=4))
    with pytest.raises(RuntimeError, match=r"whole budget \(4 steps\) without reaching 101% dev accuracy"):
        build_start_model(warmup_rows(scenes.warmup), scenes.dev, tmp_path / "start", tmp_path / "init", cfg.model,
                          replace(cfg.warmup, max_steps=4), StartRule(every=2, threshold=1.01))
    assert json.loads((tmp_path / "start" / "start_rule.json").read_text())["crossed_at"] is None


def test_a_budget_that_ends_inside_the_margin_is_an_error(tmp_path):
    from demo.scenes import write_training_scenes
    from demo.start import build_start_model

    cfg = with_seed(QUICK, 0)
    scenes = write_training_scenes(tmp_path / "scenes", replace(cfg.scenes, instruct=4, warmup=16, dev=4))
    with pytest.raises(RuntimeError, match=r"crossed 0% dev accuracy at step 2 but its budget \(4 steps\) ended "
                                           r"before the 5-step margin"):
        build_start_model(warmup_rows(scenes.warmup), scenes.dev, tmp_path / "start", tmp_path / "init", cfg.model,
                          replace(cfg.warmup, max_steps=4), StartRule(every=2, threshold=0.0, margin=5))
    assert json.loads((tmp_path / "start" / "start_rule.json").read_text())["stopped_at"] == 4


@pytest.mark.slow
def test_start_stage_never_opens_an_ood_split(tmp_path, monkeypatch):
    from demo import stage
    from demo.layout import Layout

    L = Layout(tmp_path).seed(0)
    cfg = with_seed(replace(QUICK, warmup=replace(QUICK.warmup, max_steps=4),
                            rule=StartRule(every=4, threshold=0.0)), 0)
    L.root.mkdir(parents=True)
    L.config.write_text(cfg.to_json())
    # Both OOD splits exist (as after earlier runs), so that opening either would succeed.
    heldout = write_ood_split(L.scenes.root, cfg.scenes).parent.resolve()
    validation = write_ood_split(L.scenes.root, replace(cfg.scenes, ood_split="validation")).parent.resolve()
    opened: list[str] = []
    active = [True]

    def hook(event, args):
        if active[0] and event == "open" and isinstance(args[0], (str, Path)):
            opened.append(str(Path(args[0]).resolve()))

    sys.addaudithook(hook)  # cannot be removed: it records only while this test runs
    try:
        assert stage.main(["start", str(L.root)]) == 0
        during_start = list(opened)
        (heldout / "questions.jsonl").read_text()  # the hook sees a read of the held-out split
        assert opened[-1] == str(heldout / "questions.jsonl")
    finally:
        active[0] = False
    assert any(p.startswith(str(L.scenes.dev.parent.resolve())) for p in during_start), "the dev split was not read"
    assert (L.start / "model.safetensors").is_file()
    assert any(p.startswith(str(L.scenes.instruct.parent.resolve())) for p in during_start), "no Instruct rows read"
    assert not [p for p in during_start if p.startswith((str(heldout), str(validation)))]


def test_mean_ci_is_the_two_sided_95_percent_t_interval():
    from demo.report import mean_ci

    stat = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, t(2) = 4.303
    assert stat["mean"] == 2.0 and stat["ci95"] == pytest.approx([2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5])
    assert mean_ci([5.0])["ci95"] is None
