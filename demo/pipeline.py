"""Stage 3: the whole miniature R1-V, end to end.

scenes -> warmed-up start model -> GRPO (`python -m r1v_job`, recipes/demo_cpu.yaml) -> SFT control
on the rows GRPO trained on -> held-out and in-distribution scores (`python -m eval_job`, cot and
direct prompts, every checkpoint) -> table, plot, Pushgateway (demo/report.py).

The trainer and the evaluator run as subprocesses through their own entry points, exactly as a
user or the Kubernetes jobs run them. Each stage records the settings it ran with; a rerun with the
same settings reuses the finished stage (and everything downstream of a changed stage is redone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from demo import report
from demo.scenes import SceneConfig, write_scenes
from demo.warmup import ModelSize, SFTSettings, build_start_model, supervised_control

log = logging.getLogger("demo")

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo_cpu.yaml"
STAGE_FILE = "demo_stage.json"


@dataclass(frozen=True)
class DemoConfig:
    scenes: SceneConfig = SceneConfig(warmup=4000)
    model: ModelSize = ModelSize()
    warmup: SFTSettings = SFTSettings(epochs=3)
    # The control's optimizer settings; its learning rate, schedule, batch of prompts and number of
    # steps are GRPO's (see run_demo), so that only the learning signal differs.
    control: SFTSettings = SFTSettings(warmup_ratio=0.0)
    # Overrides of recipes/demo_cpu.yaml fields, as `--field value` for r1v_job.
    grpo: dict = field(default_factory=dict)
    eval_prompts: tuple[str, ...] = ("cot", "direct")
    eval_batch_size: int = 64
    # Generous beside the ~13-token answers the model is taught, so a rambling model is cut off
    # (and counted as a parse failure) without spending minutes on it.
    eval_max_new_tokens: int = 32


FULL = DemoConfig()
QUICK = DemoConfig(
    scenes=SceneConfig(warmup=64, train=16, eval_id=8, eval_ood=8),
    warmup=SFTSettings(epochs=3, batch_size=8),
    control=SFTSettings(batch_size=2),
    grpo={"max_steps": 4, "save_steps": 2, "num_generations": 4, "per_device_train_batch_size": 8},
    eval_batch_size=8,
)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(folder: Path, fingerprint: str) -> bool:
    try:
        return json.loads((folder / STAGE_FILE).read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


def _mark(folder: Path, fingerprint: str, **info) -> None:
    (folder / STAGE_FILE).write_text(json.dumps({"fingerprint": fingerprint, **info}, indent=2) + "\n")


def _fresh(folder: Path) -> Path:
    # A stale half-run must not leak in: the trainer would resume from its checkpoints and the
    # evaluator would reuse its scores.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def recipe_fields(overrides: dict) -> dict:
    fields = yaml.safe_load(RECIPE.read_text())
    fields.update(overrides)
    return fields


def grpo_examples(fields: dict) -> tuple[int, int]:
    """(prompts per optimizer step, prompts over the run) of a one-process GRPO run; TRL's
    per_device_train_batch_size counts completions, num_generations of them per prompt."""
    per_step = fields["per_device_train_batch_size"] * fields.get("gradient_accumulation_steps", 1) \
        // fields["num_generations"]
    return per_step, per_step * fields["max_steps"]


def _cli_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def run_cmd(cmd: list[str], log_file: Path) -> None:
    """Run an entry point, its output teed to `log_file`; fail loudly with the tail on error."""
    log.info("$ %s", " ".join(cmd))
    start = time.perf_counter()
    with log_file.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=_child_env())
    if proc.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{cmd[2]} exited {proc.returncode} (log {log_file}):\n{tail}")
    log.info("  done in %.0f s (log %s)", time.perf_counter() - start, log_file)


def _child_env() -> dict:
    env = dict(os.environ)
    # The repository's packages resolve from any working directory and in an uninstalled checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def train_grpo(start: Path, train_jsonl: Path, out: Path, overrides: dict, logs: Path) -> Path:
    args = {"model_name_or_path": str(start), "dataset_name": str(train_jsonl), "output_dir": str(out), **overrides}
    cmd = [sys.executable, "-m", "r1v_job", "--config", str(RECIPE)]
    for name, value in args.items():
        cmd += [f"--{name}", _cli_value(value)]
    run_cmd(cmd, logs / "grpo.log")
    return out


def evaluate(model: Path, data: Path, out: Path, benchmark: str, cfg: DemoConfig, logs: Path,
             checkpoints: Path | None = None, pushgateway: str | None = None, run: str | None = None) -> Path:
    cmd = [sys.executable, "-m", "eval_job", "--model", str(model), "--data", str(data), "--out", str(out),
           "--prompt", ",".join(cfg.eval_prompts), "--benchmark", benchmark,
           "--batch-size", str(cfg.eval_batch_size), "--max-new-tokens", str(cfg.eval_max_new_tokens)]
    if checkpoints:
        cmd += ["--checkpoints", str(checkpoints)]
    if pushgateway:
        cmd += ["--pushgateway", pushgateway, "--run", run]
    run_cmd(cmd, logs / f"eval-{out.parent.name}-{benchmark}.log")
    return out


def run_demo(out: str | Path = "runs/demo", cfg: DemoConfig = FULL, pushgateway: str | None = None,
             run_name: str = "demo") -> dict:
    """Run every stage into `out`; returns the summary (also written to out/summary.json)."""
    t0 = time.perf_counter()
    out = Path(out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        start = time.perf_counter()
        result = fn(*a, **kw)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    scenes = timed("scenes", write_scenes, out / "scenes", cfg.scenes)

    start_dir = out / "models" / "start"
    fp_start = _fingerprint(asdict(cfg.scenes), asdict(cfg.model), asdict(cfg.warmup))
    if not _done(start_dir, fp_start):
        timed("warmup", build_start_model, scenes.warmup, _fresh(start_dir), cfg.model, cfg.warmup)
        _mark(start_dir, fp_start)

    fields = recipe_fields(cfg.grpo)
    per_step, n_examples = grpo_examples(fields)
    # GRPO gets exactly the first n_examples rows, one epoch: the control then trains on the same rows.
    grpo_overrides = {**cfg.grpo, "max_train_samples": n_examples}
    grpo_dir = out / "grpo"
    fp_grpo = _fingerprint(fp_start, fields, grpo_overrides, RECIPE.read_text())
    if not _done(grpo_dir, fp_grpo):
        timed("grpo", train_grpo, start_dir, scenes.train, _fresh(grpo_dir), grpo_overrides, logs)
        _mark(grpo_dir, fp_grpo)

    control_dir = out / "models" / "sft_control"
    # Same rows, same batch of prompts per step, hence the same number of optimizer steps, and
    # checkpoints at the same steps as GRPO's for the accuracy curve.
    # AdamW's step size is set by the learning rate whatever the scale of the loss, so equal rates,
    # schedules and step counts give the two runs the same budget of parameter movement.
    control = replace(cfg.control, batch_size=per_step, epochs=1.0, max_steps=-1,
                      learning_rate=float(fields["learning_rate"]))
    fp_control = _fingerprint(fp_start, n_examples, asdict(control), fields.get("save_steps"))
    if not _done(control_dir, fp_control):
        timed("sft_control", supervised_control, start_dir, scenes.train, n_examples, _fresh(control_dir), control,
              save_steps=fields.get("save_steps"))
        _mark(control_dir, fp_control)

    models = {"start": (start_dir, None, fp_start),
              "sft_control": (control_dir, control_dir / "_trainer", fp_control),
              "grpo": (grpo_dir, grpo_dir, fp_grpo)}
    splits = {"heldout": scenes.eval_ood, "in_dist": scenes.eval_id}
    eval_root = out / "eval"
    start = time.perf_counter()
    for name, (model_dir, ckpts, fp_model) in models.items():
        for split, data in splits.items():
            folder = eval_root / name / split
            fp_eval = _fingerprint(fp_model, asdict(cfg.scenes), cfg.eval_prompts, cfg.eval_max_new_tokens)
            if _done(folder, fp_eval):
                continue
            _fresh(folder)
            # Every checkpoint is scored on the held-out split (the accuracy curve); the
            # in-distribution split is scored for the final models only.
            evaluate(model_dir, data, folder, split, cfg, logs, checkpoints=ckpts if split == "heldout" else None,
                     pushgateway=pushgateway, run=f"{run_name}-{name}")
            _mark(folder, fp_eval)
    timings["evaluation"] = round(time.perf_counter() - start, 1)

    summary = report.build_summary(eval_root, grpo_dir, cfg.eval_prompts, n_examples=n_examples, per_step=per_step,
                                   max_steps=fields["max_steps"])
    summary["timings_seconds"] = {**timings, "total": round(time.perf_counter() - t0, 1)}
    report.write_report(summary, out)
    if pushgateway:
        report.push_summary(summary, pushgateway, run_name)
    return summary
