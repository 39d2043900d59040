"""Stage 4: the summary table, the plot and the Pushgateway push, from what the trainer and the
evaluator wrote (eval_job's scores.json / results.jsonl, the trainer's trainer_state.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from demo.warmup import CONTROLS as CONTROL_KINDS
from r1v_job.rewards import format_reward

log = logging.getLogger("demo.report")

CONTROLS = [f"sft_{kind}" for kind in CONTROL_KINDS]  # the SFT controls' model names
MODELS = {"start": "start (warmed up)", **{f"sft_{kind}": f"SFT on {kind}" for kind in CONTROL_KINDS}, "grpo": "GRPO"}
SPLITS = {"heldout": "held-out (SuperCLEVR-like)", "in_dist": "in-distribution (CLEVR-like)"}
FINAL = "final"


def _read_json(path: Path):
    return json.loads(path.read_text())


def _results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_rate(results: Path) -> float:
    """Share of outputs in R1-V's full format <think>...</think><answer>...</answer>."""
    outputs = [r["model_output"] for r in _results(results)]
    return sum(format_reward(outputs)) / len(outputs) if outputs else 0.0


def mean_abs_error(results: Path) -> float | None:
    """Mean |answer - truth| over the parsed answers: how far off the counts are, which accuracy
    (exact or not) hides. None when nothing parsed."""
    errors = [abs(r["extracted_answer"] - r["ground_truth"]) for r in _results(results)
              if isinstance(r.get("extracted_answer"), int)]
    return sum(errors) / len(errors) if errors else None


def grpo_log_history(grpo_dir: Path) -> list[dict]:
    """The trainer's per-step log, from its newest checkpoint (the final save holds no trainer state)."""
    states = sorted(grpo_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return _read_json(states[-1])["log_history"] if states else []


def build_summary(eval_root: Path, grpo_dir: Path, prompts, **info) -> dict:
    """Final scores per (model, split, prompt), held-out accuracy per checkpoint, and GRPO's rewards."""
    rows, curves = [], {}
    for model in MODELS:
        for split in SPLITS:
            folder = eval_root / model / split
            for entry in _read_json(folder / "scores.json"):
                if entry["checkpoint"] == FINAL:
                    rows.append({"model": model, "split": split, "prompt": entry["prompt"],
                                 "accuracy": entry["accuracy"], "evaluated": entry["evaluated"],
                                 "parse_failures": entry["parse_failures"],
                                 "format_rate": format_rate(folder / FINAL / entry["prompt"] / "results.jsonl"),
                                 "mean_abs_error": mean_abs_error(folder / FINAL / entry["prompt"] / "results.jsonl")})
                if split == "heldout":
                    curves.setdefault(model, {}).setdefault(entry["prompt"], []).append(
                        {"step": entry["step"], "checkpoint": entry["checkpoint"], "accuracy": entry["accuracy"]})
    for by_prompt in curves.values():
        for points in by_prompt.values():
            points.sort(key=lambda p: p["step"])
    rewards = [{k: v for k, v in entry.items() if k == "step" or k.startswith("reward") or k == "frac_reward_zero_std"}
               for entry in grpo_log_history(grpo_dir) if "reward" in entry]
    return {"rows": rows, "heldout_curves": curves, "grpo_rewards": rewards, "prompts": list(prompts), **info}


def score(summary: dict, model: str, split: str, prompt: str) -> dict | None:
    return next((r for r in summary["rows"] if (r["model"], r["split"], r["prompt"]) == (model, split, prompt)), None)


def table(summary: dict) -> str:
    """The summary as a fixed-width text table: one line per model and split, prompts side by side."""
    prompts = summary["prompts"]
    head = f"{'model':<18} {'split':<28}" + "".join(
        f" | {p + ' acc':>9} {'MAE':>4} {'format':>6} {'unparsed':>8}" for p in prompts)
    lines = [head, "-" * len(head)]
    for model, model_label in MODELS.items():
        for split, split_label in SPLITS.items():
            cells = ""
            for p in prompts:
                r = score(summary, model, split, p)
                mae = "-" if r is None or r["mean_abs_error"] is None else f"{r['mean_abs_error']:.2f}"
                cells += (f" | {100 * r['accuracy']:8.1f}% {mae:>4} {100 * r['format_rate']:5.0f}% "
                          f"{r['parse_failures']:>4}/{r['evaluated']:<3}" if r else f" | {'n/a':>9} {'':>4} {'':>6} {'':>8}")
            lines.append(f"{model_label:<18} {split_label:<28}{cells}")
    return "\n".join(lines)


def headline(summary: dict) -> list[dict]:
    """Held-out accuracy gains in points, per prompt: GRPO over the start and over each SFT control.
    (R1-V headlines the cot prompt; a direct-answer score belongs beside it, see docs/demo.md.)"""
    gains = []
    for prompt in summary["prompts"]:
        acc = {m: (score(summary, m, "heldout", prompt) or {}).get("accuracy") for m in MODELS}
        if None not in acc.values():
            gains.append({"prompt": prompt, **{f"grpo_minus_{m}_points": round(100 * (acc["grpo"] - acc[m]), 1)
                                               for m in MODELS if m != "grpo"}})
    return gains


def plot(summary: dict, path: Path) -> Path:
    """Two panels against the optimizer step: GRPO's training reward, and held-out accuracy of
    GRPO's and the SFT controls' checkpoints (step 0 is the warmed-up start)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a CI runner or in a pod
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    rewards = summary["grpo_rewards"]
    steps = [r["step"] for r in rewards]
    for key, label in (("reward", "total (0-2)"), ("rewards/accuracy_reward/mean", "accuracy"),
                       ("rewards/format_reward/mean", "format"), ("reward_std", "std within a step")):
        if rewards and key in rewards[0]:
            top.plot(steps, [r[key] for r in rewards], label=label, linestyle=":" if key == "reward_std" else "-")
    top.set_ylabel("GRPO training reward")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)

    start = {p["prompt"]: p for p in summary["rows"] if p["model"] == "start" and p["split"] == "heldout"}
    colours = {"grpo": "tab:red", "sft_answers": "tab:green", "sft_traces": "tab:blue"}
    for model in ("grpo", *CONTROLS):
        for prompt, points in summary["heldout_curves"].get(model, {}).items():
            xs = [p["step"] for p in points]
            ys = [100 * p["accuracy"] for p in points]
            if prompt in start:  # every run begins at the warmed-up model
                xs, ys = [0, *xs], [100 * start[prompt]["accuracy"], *ys]
            bottom.plot(xs, ys, marker="o", color=colours[model], linestyle="-" if prompt == "cot" else "--",
                        label=f"{MODELS[model]} ({prompt})")
    bottom.set_xlabel("optimizer step (same prompts per step for every run)")
    bottom.set_ylabel("held-out accuracy (%)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle("Miniature R1-V: GRPO vs SFT on the same scenes, scored out of distribution")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(summary: dict, out: Path) -> None:
    summary["headline"] = headline(summary)
    text = table(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.txt").write_text(text + "\n")
    plot(summary, out / "demo_plot.png")
    print(text + "\n")
    for h in summary["headline"]:
        versus = ", ".join(f"{MODELS[m]} {h[f'grpo_minus_{m}_points']:+.1f}" for m in MODELS if m != "grpo")
        print(f"held-out ({h['prompt']}), GRPO minus: {versus} points")
    print(f"summary: {out / 'summary.json'}, {out / 'summary.txt'}; plot: {out / 'demo_plot.png'}")


def push_summary(summary: dict, gateway: str, run: str) -> None:
    """The demo's final scores as r1v_demo_* gauges (job "r1v-demo", grouping {run}); the evaluator
    has already pushed its own r1v_eval_* series for every model and checkpoint."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    labels = ["model", "split", "prompt"]
    acc = Gauge("r1v_demo_accuracy_ratio", "Final accuracy (0..1), R1-V's strict rule", labels, registry=registry)
    fmt = Gauge("r1v_demo_format_ratio", "Share of outputs in <think>..</think><answer>..</answer> form", labels,
                registry=registry)
    unparsed = Gauge("r1v_demo_parse_failures", "Outputs without a parseable <answer>N</answer>", labels,
                     registry=registry)
    for r in summary["rows"]:
        key = (r["model"], r["split"], r["prompt"])
        acc.labels(*key).set(r["accuracy"])
        fmt.labels(*key).set(r["format_rate"])
        unparsed.labels(*key).set(r["parse_failures"])
    seconds = Gauge("r1v_demo_duration_seconds", "Wall time of the whole demo", registry=registry)
    seconds.set(summary.get("timings_seconds", {}).get("total", 0))
    push_to_gateway(gateway, job="r1v-demo", registry=registry, grouping_key={"run": run})
    log.info("pushed r1v_demo_* to %s (run=%s)", gateway, run)
