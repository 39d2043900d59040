"""python -m bench: measure GRPO step speed for a model and recipe, print a table, write JSON.

    python -m bench --model tiny --recipe recipes/smoke_cpu.yaml --image-size 112x112 \
        --variants ours r1v --out runs/bench/cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers
import yaml

from . import gpu_plan
from .harness import LEVERS, Variant, run_variant
from .models import prepare_model, write_scenes


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None  # a copy of the tree without .git, as on the lent GPU machine
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def _cpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), None)


def parse_cli(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny",
                        help="'tiny', a config JSON (random weights, e.g. bench/configs/qwen2vl_2b.json) or a model "
                             "folder")
    parser.add_argument("--recipe", default="recipes/smoke_cpu.yaml",
                        help="trainer recipe YAML the variants start from")
    parser.add_argument("--variants", nargs="+", default=["ours", "r1v"],
                        help="style[:options], style r1v or ours; options mb=N, rounds=N, gc, liger, "
                             "levers=a+b|all|none, warmup=N, steps=N, field=value (see bench.harness.Variant)")
    parser.add_argument("--baseline", default=None,
                        help="variant the speed-ups are relative to (default: the first r1v-style one)")
    parser.add_argument("--before", default=None,
                        help="second baseline, for the 'vs before' column (default: the first ours:...levers=none)")
    parser.add_argument("--plan", choices=["gpu"], default=None,
                        help="gpu: the variants bench.gpu_plan picks for the free GPU memory (replaces --variants, "
                             "--baseline and --before)")
    parser.add_argument("--free-gib", type=float, default=None,
                        help="with --plan: free GPU memory to plan for (default: what the GPU reports; required "
                             "on the CPU, where the plan is a dry run with one step per variant)")
    parser.add_argument("--commit", default=None,
                        help="commit recorded in the JSON (default: git's; a copied tree without .git has none)")
    parser.add_argument("--table", choices=["full", "compact"], default="full",
                        help="compact: variant, step and phase times, per-step times, rollouts/s, both ratios, "
                             "MFU, executed-FLOPs utilisation, peak memory")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=8, help="rollouts per prompt (G)")
    parser.add_argument("--completion-length", type=int, default=64, help="tokens every completion is pinned to")
    parser.add_argument("--steps", type=int, default=2, help="measured optimizer steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps first")
    parser.add_argument("--image-size", type=_size, default=(480, 320),
                        help="WxH of the synthetic scenes (CLEVR: 480x320)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="recipe override for every variant (YAML value), e.g. --set max_pixels=401408")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench"), help="where models and scenes are cached")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bench.json"))
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="accelerator peak for the MFU estimate (default: known GPUs' dense bf16 peak)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a shared CPU, 1 avoids OpenMP threads spinning "
                             "against other processes, which slowed the tiny model 10x on the 2-core dev machine")
    parser.add_argument("--time-budget", type=float, default=None, metavar="S",
                        help="start no variant after S seconds (counted from the start); later ones are skipped")
    parser.add_argument("--verbose", action="store_true", help="the trainer's own log lines too")
    return parser.parse_args(argv)


COLUMNS = [  # header, summary key, format
    ("variant", None, "{}"), ("s/step", "step_s", "{:.2f}"), ("CPU s/step", "cpu_s", "{:.2f}"),
    ("CPU vs base", None, "{:.2f}x"), ("rollouts/s", "rollouts_per_s", "{:.1f}"), ("speed-up", None, "{:.2f}x"),
    ("vs before", None, "{:.2f}x"), ("gen calls", "generate_calls", "{}"), ("gen s", "generation", "{:.2f}"),
    ("gen speed-up", None, "{:.2f}x"),
    ("ref s", "ref_logps", "{:.2f}"), ("fwd s", "policy_forward", "{:.2f}"), ("bwd s", "backward", "{:.2f}"),
    ("opt s", "optimizer", "{:.2f}"), ("other s", "other", "{:.2f}"), ("rope s", "rope_index", "{:.3f}"),
    ("images encoded", "vision_images", "{}"),
    ("gen tok/s", "generation_tokens_per_s", "{:.0f}"),
    ("tok/s", "generated_tokens_per_s", "{:.0f}"), ("peak GiB", None, "{:.2f}"),
    ("TFLOP/step", "tflop_per_step", "{:.3g}"),
    ("exec TFLOP/step", "executed_tflop_per_step", "{:.3g}"), ("MFU", "mfu", "{:.1%}"),
    ("exec util", "executed_utilization", "{:.1%}"),
]
# What bench/gpu.sh prints: the step, its phases, every step's time (warm-up ones in parentheses, so a
# recompile shows), throughput against both baselines, both FLOP utilisations and the peak memory.
COMPACT = ["variant", "s/step", "step times s", "rollouts/s", "speed-up", "vs before", "gen s", "ref s", "fwd s",
           "bwd s", "opt s", "other s", "MFU", "exec util", "peak GiB"]


def _step_times(result: dict) -> str:
    times = [f"{step['step_s']:.2f}" for step in result.get("steps", [])]
    warmup = result.get("warmup", 0)
    return " ".join([f"({t})" for t in times[:warmup]] + times[warmup:])


def table(results: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table, one row per variant (docs/performance.md takes it as it is); `columns`: the
    headers to show (default all of COLUMNS)."""
    known = {header: (key, fmt) for header, key, fmt in COLUMNS}
    headers = columns or [header for header, _, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for result in results:
        summary = result.get("summary")
        if summary is None:
            why = result.get("skipped") or result["error"].strip().splitlines()[-1]
            lines.append(f"| {result['variant']} | {why} |")
            continue
        cells = []
        for header in headers:
            if header == "step times s":
                cells.append(_step_times(result))
                continue
            key, fmt = known[header]
            value = {"variant": result["variant"], "speed-up": result.get("speedup"),
                     "vs before": result.get("before_ratio"), "CPU vs base": result.get("cpu_ratio"),
                     "gen speed-up": result.get("generation_speedup"),
                     "peak GiB": (result.get("peak_memory_bytes") or 0) / 2**30}.get(header, summary.get(key))
            cells.append("-" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Measure, print the table, write the JSON; returns the report. Leaves logging as the caller set it."""
    args = parse_cli(argv)
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    for assignment in args.sets:
        key, _, value = assignment.partition("=")
        recipe[key] = yaml.safe_load(value)
    device = "cuda" if torch.cuda.is_available() and not recipe.get("use_cpu") else "cpu"
    plan = None
    if args.plan:
        if args.free_gib is None and device != "cuda":
            raise SystemExit("--plan gpu on the CPU: give --free-gib, the GPU memory to plan for")
        free = args.free_gib if args.free_gib is not None else torch.cuda.mem_get_info()[0] / 2**30
        plan = gpu_plan.plan(free, rollouts=args.prompts * args.generations, generations=args.generations,
                             quick=device != "cuda")
        args.variants, args.baseline, args.before = plan.variants, plan.baseline, plan.before
        print(f"plan for {free:.1f} GiB free:", flush=True)
        for spec in plan.variants:
            print(f"  {spec}: {plan.notes[spec]}", flush=True)
        for spec, why in plan.skipped:
            print(f"  skipped {spec}: {why}", flush=True)
    variants = [Variant.parse(spec) for spec in args.variants]  # fail on a typo before any model is built
    if args.baseline is None:
        args.baseline = next((v.spec for v in variants if v.style == "r1v"), variants[0].spec)
    if args.before is None:
        args.before = next((v.spec for v in variants if v.style == "ours"
                            and all(v.overrides.get(f) is False for f in LEVERS.values())), None)
    if args.threads:
        torch.set_num_threads(args.threads)
    begun = started = time.perf_counter()
    model_dir = prepare_model(args.model, args.workdir, device=device)
    width, height = args.image_size
    most_steps = max((v.warmup if v.warmup is not None else args.warmup) + (v.steps or args.steps) for v in variants)
    # Fresh prompts for every step; scenes are cheap to draw and cached between runs.
    dataset = write_scenes(args.workdir / f"scenes-{width}x{height}", max(args.prompts * most_steps, 32), width, height)
    print(f"model {model_dir} ready, scenes {dataset} ({time.perf_counter() - started:.0f}s)", flush=True)

    results = []
    report = {
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": args.commit or _commit(),
        "model": args.model, "model_dir": str(model_dir), "recipe": args.recipe, "sets": args.sets,
        "prompts": args.prompts, "generations": args.generations, "rollouts_per_step": args.prompts * args.generations,
        "completion_length": args.completion_length, "image_size": f"{width}x{height}",
        "steps": args.steps, "warmup": args.warmup, "baseline": args.baseline, "before": args.before,
        "plan": None if plan is None else {"variants": plan.notes, "skipped": dict(plan.skipped)},
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "cpu_model": _cpu_model(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": _version("trl"),
                     "liger_kernel": _version("liger-kernel")},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        started = time.perf_counter()
        if args.time_budget and started - begun > args.time_budget:
            result = {"variant": variant.spec, "style": variant.style,
                      "skipped": f"time budget of {args.time_budget:.0f}s spent"}
        else:
            try:
                result = run_variant(variant, recipe, model_dir=model_dir, dataset=dataset, prompts=args.prompts,
                                     generations=args.generations, completion_length=args.completion_length,
                                     steps=args.steps, warmup=args.warmup, peak_tflops=args.peak_tflops)
            except Exception:  # one variant running out of memory must not cost the others' figures
                result = {"variant": variant.spec, "style": variant.style, "error": traceback.format_exc()}
        # Outside the except block, so the traceback's frames (and the tensors they hold) are gone.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result["wall_s"] = time.perf_counter() - started
        results.append(result)
        summary = result.get("summary")
        status = (f"{summary['step_s']:.2f} s/step, {summary['rollouts_per_s']:.1f} rollouts/s" if summary
                  else result.get("skipped") or result["error"].strip().splitlines()[-1])
        print(f"[{variant.spec}] {status} ({result['wall_s']:.0f}s)", flush=True)
        _add_speedups(results, args.baseline, args.before)
        # Written after every variant: a run cut short still leaves the figures it got.
        args.out.write_text(json.dumps(report, indent=2))
    for spec, why in plan.skipped if plan else ():
        results.append({"variant": spec, "skipped": f"not run: {why}"})
    args.out.write_text(json.dumps(report, indent=2))

    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items() if version)
    print(f"\n{report['device']} ({report['cpu_model']}); {versions}; commit {report['commit']}")
    print(f"{args.prompts} prompts x {args.generations} rollouts, {args.completion_length}-token "
          f"completions, median of {args.steps} step(s) after {args.warmup} warm-up unless a variant says otherwise; "
          f"speed-up = rollouts/s (gen speed-up: rollouts/s of the generation phase) vs {args.baseline}; "
          f"vs before = rollouts/s vs {args.before}")
    peaks = sorted({f"{r['peak_tflops']:.3g} TFLOP/s ({r['peak_source']})" for r in results if r.get("peak_tflops")})
    print(f"MFU = FLOPs the algorithm needs (each prompt's image encoded once per pass, no recomputation) / step "
          f"time / peak; exec util = FLOPs executed / step time / the same peak; peak: {'; '.join(peaks) or '-'}\n")
    print(table(results, COMPACT if args.table == "compact" else None))
    print(f"\nJSON: {args.out}")
    return report


def _add_speedups(results: list[dict], baseline_name: str, before_name: str | None = None) -> None:
    baseline = next((r for r in results if r["variant"] == baseline_name and "summary" in r), None)
    before = next((r for r in results if r["variant"] == before_name and "summary" in r), None)
    for result in results:
        if before and "summary" in result:
            result["before_ratio"] = result["summary"]["rollouts_per_s"] / before["summary"]["rollouts_per_s"]
        if baseline and "summary" in result:
            result["speedup"] = result["summary"]["rollouts_per_s"] / baseline["summary"]["rollouts_per_s"]
            # Process CPU time per rollout against the baseline's (all threads; < 1 = less CPU work).
            result["cpu_ratio"] = ((result["summary"]["cpu_s"] / result["summary"]["rollouts"])
                                   / (baseline["summary"]["cpu_s"] / baseline["summary"]["rollouts"]))
            result["generation_speedup"] = (result["summary"]["generation_rollouts_per_s"]
                                            / baseline["summary"]["generation_rollouts_per_s"])


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    verbose = "--verbose" in sys.argv
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if verbose else logging.WARNING)
    if not verbose:  # the table is the output; per-step trainer chatter would bury it
        transformers.utils.logging.set_verbosity_error()
    main()
