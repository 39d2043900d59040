"""The demo pipeline end to end on a handful of scenes and two seeds (`python -m demo --quick`): the
real trainer and evaluator entry points, a few GRPO steps, run twice. The full demo's figures live
in docs/demo.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from demo.layout import Layout
from demo.report import MODELS, grpo_log_history, mean_ci

REPO = Path(__file__).resolve().parents[2]
SEEDS = (0, 1)


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "demo", "--quick", "--out", str(out), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, pushgateway) -> list[tuple[Path, str]]:
    runs = []
    for i in (1, 2):
        out = tmp_path_factory.mktemp(f"demo{i}")
        proc = _run(out, "--pushgateway", pushgateway.url, "--run", f"quick{i}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        runs.append((out, proc.stdout))
    return runs


@pytest.fixture(scope="module")
def quick_run(quick_runs) -> Path:
    return quick_runs[0][0]


@pytest.fixture(scope="module")
def design_run(tmp_path_factory) -> Path:
    """A design run: the study arm (the demo's is verbal), scored on the validation split."""
    out = tmp_path_factory.mktemp("design")
    proc = _run(out, "--split", "validation", "--arm", "study")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_two_quick_runs_give_identical_figures(quick_runs):
    first, second = (_summary(out) for out, _ in quick_runs)
    first.pop("timings_seconds"), second.pop("timings_seconds")
    assert first == second
    for seed in SEEDS:  # and the same weights
        a, b = (load_file(Layout(out).seed(seed).grpo / "model.safetensors") for out, _ in quick_runs)
        assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_rewards_vary_within_groups(quick_run):
    # GRPO learns only from differences between a prompt's completions: if every group's rewards
    # were equal, every advantage would be zero and the run would teach nothing.
    for seed in SEEDS:
        steps = [e for e in grpo_log_history(Layout(quick_run).seed(seed).grpo) if "reward_std" in e]
        assert steps, "the trainer logged no reward statistics"
        assert any(e["reward_std"] > 0 for e in steps), [e["reward_std"] for e in steps]


@pytest.mark.slow
def test_grpo_changes_the_policy_of_every_seed(quick_run):
    starts = []
    for seed in SEEDS:
        L = Layout(quick_run).seed(seed)
        start = load_file(L.start / "model.safetensors")
        grpo = load_file(L.grpo / "model.safetensors")
        assert start.keys() == grpo.keys()
        assert any(not (start[k] == grpo[k]).all() for k in start), f"seed {seed}: GRPO changed no parameter"
        starts.append(start)
    # The seeds are different runs: other scenes and another random init.
    assert any(not (starts[0][k] == starts[1][k]).all() for k in starts[0])


@pytest.mark.slow
def test_heldout_split_is_drawn_after_the_start_is_fixed(quick_run):
    for seed in SEEDS:
        L = Layout(quick_run).seed(seed)
        rule = json.loads((L.start / "start_rule.json").read_text())
        assert rule["stopped_at"] == rule["crossed_at"] + rule["rule"]["margin"]
        assert L.scenes.eval_ood.stat().st_mtime_ns > (L.start / "start_rule.json").stat().st_mtime_ns


@pytest.mark.slow
def test_a_design_run_scores_the_validation_split_and_never_draws_the_heldout_one(design_run, quick_run):
    summary = _summary(design_run)
    assert (summary["ood_split"], summary["arm"], summary["instruct_ood"]) == ("validation", "study", False)
    for per in summary["per_seed"]:
        assert {r["split"] for r in per["rows"]} == {"validation", "in_dist"}
        assert any(e["reward_std"] > 0 for e in grpo_log_history(Layout(design_run).seed(per["seed"]).grpo)
                   if "reward_std" in e)
    assert not list(design_run.glob("seed-*/scenes/eval_ood")) and list(design_run.glob("seed-*/scenes/validation"))
    assert not list(quick_run.glob("seed-*/scenes/validation"))
    for seed in SEEDS:
        # Same scenes and init as the held-out run's seed (Instruct families out in both): only the
        # arm's answers differ, and they reach the start's weights.
        design, held = Layout(design_run).seed(seed), Layout(quick_run).seed(seed)
        init_a, init_b = (load_file(L.start_init / "model.safetensors") for L in (design, held))
        assert all((init_a[k] == init_b[k]).all() for k in init_a)
        assert (design.scenes.instruct.read_bytes() == held.scenes.instruct.read_bytes())
        start_a, start_b = (load_file(L.start / "model.safetensors") for L in (design, held))
        assert any(not (start_a[k] == start_b[k]).all() for k in start_a)


@pytest.mark.slow
def test_per_seed_rows_means_intervals_and_plot(quick_run):
    summary = _summary(quick_run)
    assert summary["seeds"] == list(SEEDS) and [p["seed"] for p in summary["per_seed"]] == list(SEEDS)
    cells = {(m, s, p) for m in MODELS for s in ("heldout", "in_dist") for p in ("cot", "direct")}
    for per in summary["per_seed"]:
        assert {(r["model"], r["split"], r["prompt"]) for r in per["rows"]} == cells
        for r in per["rows"]:
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["format_rate"] <= 1.0
            assert 0 <= r["parse_failures"] <= r["evaluated"]
        # One held-out point per checkpoint plus the final model, at increasing steps.
        for model in ("grpo", "sft_answers", "sft_cot"):
            steps = [p["step"] for p in per["ood_curves"][model]["cot"]]
            assert len(steps) >= 2 and steps == sorted(steps)
        assert per["grpo_rewards"], "no GRPO rewards against step"
    # Means are over the per-seed rows, with a t-interval; headline gains are per-seed differences.
    for m in summary["means"]:
        values = [100 * next(r["accuracy"] for r in per["rows"] if (r["model"], r["split"], r["prompt"]) ==
                             (m["model"], m["split"], m["prompt"])) for per in summary["per_seed"]]
        expected = mean_ci(values)
        assert m["accuracy"]["values"] == pytest.approx(values)
        assert m["accuracy"]["mean"] == pytest.approx(expected["mean"])
        assert m["accuracy"]["ci95"] == pytest.approx(expected["ci95"])
    for h in summary["headline"]:
        acc = [{(r["model"]): r["accuracy"] for r in per["rows"]
                if r["split"] == "heldout" and r["prompt"] == h["prompt"]}
               for per in summary["per_seed"]]
        for model in ("start", "sft_answers", "sft_cot"):
            assert h[f"grpo_minus_{model}_points"]["values"] == pytest.approx(
                [100 * (a["grpo"] - a[model]) for a in acc], abs=0.06)
    table = (quick_run / "summary.txt").read_text()
    assert all(label in table for label in MODELS.values()) and "95% CI" in table
    png = (quick_run / "demo_plot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.slow
def test_terminal_shows_stages_and_the_table_while_trainer_output_goes_to_stage_logs(quick_runs):
    out, stdout = quick_runs[0]
    for seed in SEEDS:
        for stage in ("start", "grpo", "controls", "score_grpo"):
            assert f"seed {seed} {stage}: started" in stdout and f"seed {seed} {stage}: done in" in stdout
    assert "GRPO minus" in stdout and "95% CI" in stdout and "(R1-V's RL-vs-SFT finding): " in stdout
    assert "'loss'" not in stdout and "Writing model shards" not in stdout
    logs = "".join(p.read_text() for p in out.glob("seed-*/logs/*.log"))
    assert "'loss'" in logs and "step 4/4" in logs


@pytest.mark.slow
def test_scores_reach_the_pushgateway(quick_run, pushgateway):
    summary = _summary(quick_run)
    for per in summary["per_seed"]:
        for r in per["rows"]:
            labels = {"job": "r1v-demo", "run": "quick1", "model": r["model"], "split": r["split"],
                      "prompt": r["prompt"], "seed": str(per["seed"])}
            assert pushgateway.value("r1v_demo_accuracy_ratio", **labels) == pytest.approx(r["accuracy"])
            assert pushgateway.value("r1v_demo_parse_failures", **labels) == r["parse_failures"]
    for m in summary["means"]:
        assert pushgateway.value("r1v_demo_accuracy_ratio", job="r1v-demo", run="quick1", model=m["model"],
                                 split=m["split"], prompt=m["prompt"], seed="mean") == pytest.approx(
            m["accuracy"]["mean"] / 100)
    assert pushgateway.value("r1v_demo_duration_seconds", run="quick1") == summary["timings_seconds"]["total"]
    # The evaluator pushed its own series, one run label per seed, model and split.
    for model in MODELS:
        assert pushgateway.samples("r1v_eval_accuracy_ratio", run=f"quick1-s1-{model}-heldout", prompt="cot")


def test_more_grpo_steps_than_training_scenes_is_refused_before_any_work(tmp_path):
    # 4 steps x 2 prompts fit the quick run's 16 scenes; 40 steps would need 80 and make GRPO
    # loop over rows the SFT controls see once.
    proc = _run(tmp_path, "--set", "max_steps=40")
    assert proc.returncode == 2
    assert "GRPO needs 80 training scenes (max_steps 40 x 2 prompts per step)" in proc.stderr
    assert "SceneConfig.train draws 16" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_an_unknown_recipe_field_is_refused_by_the_trainers_parser(tmp_path):
    proc = _run(tmp_path, "--set", "no_such_field=1")
    assert proc.returncode == 2
    assert "no_such_field" in proc.stderr.splitlines()[-1]
    assert not list(tmp_path.iterdir())
