"""The report over seeds: per-seed rows, means with 95% intervals, the headline, the plot and the
Pushgateway push, all read from what the stages wrote (eval_job's scores.json / results.jsonl, the
trainer's trainer_state.json, the start rule's start_rule.json), found through demo.layout."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from demo.layout import Layout, SeedLayout
from demo.start import RULE_FILE
from eval_job.checkpoints import FINAL
from r1v_job.rewards import format_reward
from r1v_job.synthetic import read_jsonl

logger = logging.getLogger(__name__)

MODELS = {"start": "start (Instruct)", "sft_answers": "SFT on answers", "sft_cot": "CoT-SFT (teacher traces)",
          "grpo": "GRPO"}
CONTROL_MODELS = ("sft_answers", "sft_cot")
EVAL_SPLIT_LABELS = {"heldout": "held-out (SuperCLEVR-like)", "validation": "validation (design runs)",
                     "in_dist": "in-distribution (CLEVR-like)"}
SHORT_LABELS = {"heldout": "held-out", "validation": "valid.", "in_dist": "in-dist"}
# Student's t, two-sided 95%, by degrees of freedom (n - 1 seeds).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> dict:
    """Mean and two-sided 95% t-interval over seeds (no interval for a single seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "values": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [mean - half, mean + half], "values": values}


def format_rate(results: Path) -> float:
    """Share of outputs in R1-V's full format <think>...</think><answer>...</answer>."""
    outputs = [r["model_output"] for r in read_jsonl(results)]
    return sum(format_reward(outputs)) / len(outputs) if outputs else 0.0


def mean_abs_error(results: Path) -> float | None:
    """Mean |answer - truth| over the parsed answers: how far off the counts are, which exact-match
    accuracy hides. None when nothing parsed."""
    errors = [abs(r["extracted_answer"] - r["ground_truth"]) for r in read_jsonl(results)
              if isinstance(r.get("extracted_answer"), int)]
    return sum(errors) / len(errors) if errors else None


def grpo_log_history(grpo_dir: Path) -> list[dict]:
    """The trainer's per-step log, from its newest checkpoint (the final save holds no trainer state)."""
    states = sorted(grpo_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["log_history"] if states else []


def seed_summary(L: SeedLayout, prompts, ood: str) -> dict:
    """One seed: final scores per (model, split, prompt), OOD accuracy per checkpoint, GRPO's
    rewards per step, and where the start rule stopped the Instruct stage."""
    rows, curves = [], {}
    for model in MODELS:
        for split in (ood, "in_dist"):
            folder = L.eval(model, split)
            for entry in json.loads((folder / "scores.json").read_text()):
                results = folder / FINAL / entry["prompt"] / "results.jsonl"
                if entry["checkpoint"] == FINAL:
                    rows.append({"model": model, "split": split, "prompt": entry["prompt"],
                                 "accuracy": entry["accuracy"], "evaluated": entry["evaluated"],
                                 "parse_failures": entry["parse_failures"], "format_rate": format_rate(results),
                                 "mean_abs_error": mean_abs_error(results)})
                if split == ood:
                    curves.setdefault(model, {}).setdefault(entry["prompt"], []).append(
                        {"step": entry["step"], "checkpoint": entry["checkpoint"], "accuracy": entry["accuracy"]})
    for by_prompt in curves.values():
        for points in by_prompt.values():
            points.sort(key=lambda p: p["step"])
    rewards = [{k: v for k, v in e.items() if k == "step" or k.startswith("reward") or k == "frac_reward_zero_std"}
               for e in grpo_log_history(L.grpo) if "reward" in e]
    rule = json.loads((L.start / RULE_FILE).read_text())
    start = {"stopped_at": rule["stopped_at"], "crossed_at": rule["crossed_at"],
             "dev_accuracy": rule["checks"][-1]["dev_accuracy"] if rule["checks"] else None}
    return {"seed": L.seed, "start": start, "rows": rows, "ood_curves": curves, "grpo_rewards": rewards,
            "headline": seed_headline(rows, prompts, ood)}


def _score(rows: list[dict], model: str, split: str, prompt: str) -> dict | None:
    return next((r for r in rows if (r["model"], r["split"], r["prompt"]) == (model, split, prompt)), None)


def seed_headline(rows: list[dict], prompts, ood: str) -> list[dict]:
    """OOD accuracy gains in points, per prompt: GRPO over the start and over each control."""
    gains = []
    for prompt in prompts:
        acc = {m: (_score(rows, m, ood, prompt) or {}).get("accuracy") for m in MODELS}
        if None not in acc.values():
            gains.append({"prompt": prompt, **{f"grpo_minus_{m}_points": round(100 * (acc["grpo"] - acc[m]), 1)
                                               for m in MODELS if m != "grpo"}})
    return gains


def build_summary(layout: Layout, cfg, plan: dict) -> dict:
    ood = cfg.scenes.ood_split
    per_seed = [seed_summary(layout.seed(s), cfg.eval_prompts, ood) for s in cfg.seeds]
    means = []
    for model in MODELS:
        for split in (ood, "in_dist"):
            for prompt in cfg.eval_prompts:
                found = [_score(p["rows"], model, split, prompt) for p in per_seed]
                if None in found:
                    continue
                means.append({"model": model, "split": split, "prompt": prompt,
                              "accuracy": mean_ci([100 * r["accuracy"] for r in found]),
                              "format_rate": sum(r["format_rate"] for r in found) / len(found),
                              "parse_failures": sum(r["parse_failures"] for r in found),
                              "evaluated": sum(r["evaluated"] for r in found)})
    headline = []
    for prompt in cfg.eval_prompts:
        per = [next((h for h in p["headline"] if h["prompt"] == prompt), None) for p in per_seed]
        if None in per:
            continue
        headline.append({"prompt": prompt,
                         **{f"grpo_minus_{m}_points": mean_ci([h[f"grpo_minus_{m}_points"] for h in per])
                                              for m in MODELS if m != "grpo"}})
    in_dist = [_score(p["rows"], m, "in_dist", "cot") for p in per_seed for m in ("start", "grpo")]
    summary = {"seeds": list(cfg.seeds), "prompts": list(cfg.eval_prompts), "ood_split": ood, "arm": cfg.arm,
               "instruct_ood": cfg.scenes.instruct_ood, "plan": plan, "per_seed": per_seed,
               "means": means, "headline": headline,
               "start_stopped_at": [p["start"]["stopped_at"] for p in per_seed],
               "start_crossed_at": [p["start"]["crossed_at"] for p in per_seed],
               "grpo_minus_start_in_dist_cot_points": mean_ci(
                   [100 * (g["accuracy"] - s["accuracy"]) for s, g in zip(in_dist[::2], in_dist[1::2])])
               if None not in in_dist else None}
    summary["findings"] = findings(summary)
    return summary


def interval(stat: dict, signed: bool = False) -> str:
    """`mean [lo, hi]` of a mean_ci() result (the mean alone without an interval)."""
    sign = "+" if signed else ""
    if stat["ci95"] is None:
        return f"{stat['mean']:{sign}.1f}"
    lo, hi = stat["ci95"]
    return f"{stat['mean']:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]"


def table(summary: dict) -> str:
    """Fixed-width table: one line per model and split; per prompt the mean accuracy over seeds with
    its 95% interval, each seed's accuracy, and the format rate."""
    prompts, n = summary["prompts"], len(summary["seeds"])
    width = 22 + 7 * n
    head = f"{'model':<25} {'split':<9}" + "".join(f" | {p + ' acc % mean [95% CI]; seeds':<{width}} {'format':>6}"
                                                  for p in prompts)
    lines = [head, "-" * len(head)]
    for model, label in MODELS.items():
        for split in (summary["ood_split"], "in_dist"):
            cells = ""
            for p in prompts:
                m = next((r for r in summary["means"] if (r["model"], r["split"], r["prompt"]) == (model, split, p)),
                         None)
                if m is None:
                    cells += f" | {'n/a':<{width}} {'':>6}"
                    continue
                seeds = " ".join(f"{v:5.1f}" for v in m["accuracy"]["values"])
                cells += f" | {interval(m['accuracy']) + '; ' + seeds:<{width}} {100 * m['format_rate']:5.0f}%"
            lines.append(f"{label:<25} {SHORT_LABELS[split]:<9}{cells}")
    return "\n".join(lines)


def headline_lines(summary: dict) -> list[str]:
    lines = []
    for h in summary["headline"]:
        parts = []
        for m in MODELS:
            if m == "grpo":
                continue
            stat = h[f"grpo_minus_{m}_points"]
            parts.append(f"{MODELS[m]} {interval(stat, signed=True)}")
        lines.append(f"{SHORT_LABELS[summary['ood_split']]} ({h['prompt']}), GRPO minus: " + "; ".join(parts) +
                     f" points (mean [95% CI] over {len(summary['seeds'])} seeds)")
    ind = summary.get("grpo_minus_start_in_dist_cot_points")
    if ind:
        lines.append(f"in-distribution (cot), GRPO minus start: {interval(ind, signed=True)} points")
    return lines


def plot(summary: dict, path: Path) -> Path:
    """Two panels against the optimizer step, every seed drawn thin and the mean thick: GRPO's
    training accuracy reward, and held-out (cot) accuracy of GRPO's and the controls' checkpoints
    (step 0 is each seed's start)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a CI runner or in a pod
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True)
    colours = {"grpo": "tab:red", "sft_answers": "tab:green", "sft_cot": "tab:blue"}
    key = "rewards/accuracy_reward/mean"
    series = [[(r["step"], r[key]) for r in p["grpo_rewards"] if key in r] for p in summary["per_seed"]]
    for s in series:
        top.plot([x for x, _ in s], [y for _, y in s], color="tab:red", alpha=0.3, linewidth=0.8)
    if series and all(series):
        steps = sorted(set.intersection(*(set(x for x, _ in s) for s in series)))
        top.plot(steps, [sum(dict(s)[x] for s in series) / len(series) for x in steps], color="tab:red",
                 linewidth=2, label=f"accuracy reward, mean of {len(series)} seeds (thin: each seed)")
    top.set_ylabel("GRPO training reward (sampled, T=1)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)

    for model in ("grpo", *CONTROL_MODELS):
        curves = []
        for p in summary["per_seed"]:
            start = _score(p["rows"], "start", summary["ood_split"], "cot")
            points = p["ood_curves"].get(model, {}).get("cot", [])
            xs = [0] + [q["step"] for q in points]
            ys = [100 * start["accuracy"]] + [100 * q["accuracy"] for q in points]
            curves.append(dict(zip(xs, ys)))
            bottom.plot(xs, ys, color=colours[model], alpha=0.3, linewidth=0.8)
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        bottom.plot(steps, [sum(c[x] for c in curves) / len(curves) for x in steps], color=colours[model],
                    linewidth=2, marker="o", label=f"{MODELS[model]}, mean")
    bottom.set_xlabel("optimizer step (same prompts per step for every run)")
    bottom.set_ylabel(f"{EVAL_SPLIT_LABELS[summary['ood_split']]} accuracy, cot (%)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle(f"Miniature R1-V over {len(summary['seeds'])} seeds: GRPO vs SFT on the same scenes, "
                 "scored out of distribution", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def above_zero(stat: dict) -> bool:
    """Whether a mean_ci() result's 95% interval lies above 0."""
    return stat["ci95"] is not None and stat["ci95"][0] > 0


def findings(summary: dict) -> list[str]:
    """R1-V's two findings, each in one sentence: shown (mean gain with its 95% interval above 0) or
    not, with the figures (`cot`, the scored OOD split)."""
    head = next((h for h in summary["headline"] if h["prompt"] == "cot"), None)
    if head is None:
        return []
    split = EVAL_SPLIT_LABELS[summary["ood_split"]]
    over_start, over_sft = head["grpo_minus_start_points"], head["grpo_minus_sft_answers_points"]
    return [
        f"GRPO above its start on the {split} split (R1-V's headline): "
        f"{'shown' if above_zero(over_start) else 'not shown'}, {interval(over_start, signed=True)} points.",
        f"GRPO above SFT on the same rows there (R1-V's RL-vs-SFT finding): "
        f"{'shown' if above_zero(over_sft) else 'not shown'}, {interval(over_sft, signed=True)} points.",
    ]


def write_report(summary: dict, layout: Layout, echo=print) -> None:
    text = table(summary) + "\n\n" + "\n".join(headline_lines(summary) + [""] + summary["findings"])
    layout.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    layout.summary_txt.write_text(text + "\n")
    plot(summary, layout.plot)
    echo("\n" + text + "\n")
    echo(f"Instruct stage, per seed: dev crossed the threshold at steps {summary['start_crossed_at']}, "
         f"stopped at {summary['start_stopped_at']}")
    echo(f"summary: {layout.summary_json}, {layout.summary_txt}; plot: {layout.plot}")


def push_summary(summary: dict, gateway: str, run: str) -> None:
    """The demo's final scores as r1v_demo_* gauges (job "r1v-demo", grouping {run}), per seed and as
    the mean over seeds (seed="mean"); eval_job has already pushed its own r1v_eval_* series."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    labels = ["model", "split", "prompt", "seed"]
    acc = Gauge("r1v_demo_accuracy_ratio", "Final accuracy (0..1), R1-V's strict rule", labels, registry=registry)
    fmt = Gauge("r1v_demo_format_ratio", "Share of outputs in <think>..</think><answer>..</answer> form", labels,
                registry=registry)
    unparsed = Gauge("r1v_demo_parse_failures", "Outputs without a parseable answer", labels, registry=registry)
    for p in summary["per_seed"]:
        for r in p["rows"]:
            key = (r["model"], r["split"], r["prompt"], str(p["seed"]))
            acc.labels(*key).set(r["accuracy"])
            fmt.labels(*key).set(r["format_rate"])
            unparsed.labels(*key).set(r["parse_failures"])
    for m in summary["means"]:
        acc.labels(m["model"], m["split"], m["prompt"], "mean").set(m["accuracy"]["mean"] / 100)
    seconds = Gauge("r1v_demo_duration_seconds", "Wall time of the whole demo", registry=registry)
    seconds.set(summary.get("timings_seconds", {}).get("total", 0))
    push_to_gateway(gateway, job="r1v-demo", registry=registry, grouping_key={"run": run})
    logger.info("pushed r1v_demo_* to %s (run=%s)", gateway, run)
