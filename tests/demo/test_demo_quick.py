"""The demo pipeline end to end on a handful of scenes (`python -m demo --quick`): the real trainer
and evaluator entry points, a few GRPO steps. The full demo's figures live in docs/demo.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from demo.report import MODELS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, pushgateway) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "demo", "--quick", "--out", str(out), "--pushgateway", pushgateway.url,
                           "--run", "quick"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _log_history(grpo_dir: Path) -> list[dict]:
    states = sorted(grpo_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    assert states, f"no GRPO checkpoint with a trainer_state.json in {grpo_dir}"
    return json.loads(states[-1].read_text())["log_history"]


@pytest.mark.slow
def test_rewards_vary_within_groups(quick_run):
    # GRPO learns only from differences between a prompt's completions: if every group's rewards
    # were equal, every advantage would be zero and the run would teach nothing.
    steps = [e for e in _log_history(quick_run / "grpo") if "reward_std" in e]
    assert steps, "the trainer logged no reward statistics"
    assert any(e["reward_std"] > 0 for e in steps), [e["reward_std"] for e in steps]
    assert any(e.get("frac_reward_zero_std", 0.0) < 1.0 for e in steps)


@pytest.mark.slow
def test_grpo_changes_the_policy(quick_run):
    start = load_file(quick_run / "models" / "start" / "model.safetensors")
    grpo = load_file(quick_run / "grpo" / "model.safetensors")
    assert start.keys() == grpo.keys()
    changed = [name for name in start if not (start[name] == grpo[name]).all()]
    assert changed, "GRPO left every parameter of the warmed-up model unchanged"


@pytest.mark.slow
def test_summary_and_plot_written(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    cells = {(r["model"], r["split"], r["prompt"]) for r in summary["rows"]}
    assert cells == {(m, s, p) for m in MODELS for s in ("heldout", "in_dist")
                     for p in ("cot", "direct")}
    for r in summary["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["format_rate"] <= 1.0
        assert 0 <= r["parse_failures"] <= r["evaluated"]
    # One held-out point per GRPO checkpoint plus the final model, at increasing steps.
    grpo_steps = [p["step"] for p in summary["heldout_curves"]["grpo"]["cot"]]
    assert len(grpo_steps) >= 2 and grpo_steps == sorted(grpo_steps)
    assert summary["grpo_rewards"], "no GRPO rewards against step"
    # The headline gains are differences of the held-out rows, for each prompt.
    acc = {(r["model"], r["prompt"]): r["accuracy"] for r in summary["rows"] if r["split"] == "heldout"}
    assert [h["prompt"] for h in summary["headline"]] == ["cot", "direct"]
    for h in summary["headline"]:
        for model in ("start", "sft_answers", "sft_traces"):
            assert h[f"grpo_minus_{model}_points"] == pytest.approx(
                100 * (acc["grpo", h["prompt"]] - acc[model, h["prompt"]]), abs=0.06)
    table = (quick_run / "summary.txt").read_text()
    assert all(label in table for label in MODELS.values())
    png = (quick_run / "demo_plot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.slow
def test_scores_reach_the_pushgateway(quick_run, pushgateway):
    summary = json.loads((quick_run / "summary.json").read_text())
    for r in summary["rows"]:
        labels = {"job": "r1v-demo", "run": "quick", "model": r["model"], "split": r["split"], "prompt": r["prompt"]}
        assert pushgateway.value("r1v_demo_accuracy_ratio", **labels) == pytest.approx(r["accuracy"])
        assert pushgateway.value("r1v_demo_parse_failures", **labels) == r["parse_failures"]
    assert pushgateway.value("r1v_demo_duration_seconds", run="quick") == summary["timings_seconds"]["total"]
    # The evaluator pushed its own series, one run label per model and split (a push replaces its group).
    for model in MODELS:
        assert pushgateway.samples("r1v_eval_accuracy_ratio", run=f"quick-{model}-heldout", prompt="cot")


def test_more_grpo_steps_than_training_scenes_is_refused_before_any_work(tmp_path):
    # 4 steps x 2 prompts fit the quick run's 16 scenes; 40 steps would need 80 and make GRPO
    # loop over rows the SFT controls see once.
    proc = subprocess.run([sys.executable, "-m", "demo", "--quick", "--out", str(tmp_path), "--set", "max_steps=40"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "GRPO needs 80 training scenes (max_steps 40 x 2 prompts per step)" in proc.stderr
    assert "SceneConfig.train draws 16" in proc.stderr
    assert not (tmp_path / "scenes").exists()
