"""Stage 3: the whole miniature R1-V, end to end.

scenes -> warmed-up start model -> GRPO (`python -m r1v_job`, recipes/demo_cpu.yaml) -> two SFT
controls on the rows GRPO trained on -> held-out and in-distribution scores (`python -m eval_job`, cot and
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
from types import SimpleNamespace

import yaml

from demo import report
from demo.scenes import SceneConfig, write_scenes
from demo.warmup import CONTROLS, ModelSize, SFTSettings, build_start_model, supervised_control
from r1v_job.config import step_batch

log = logging.getLogger("demo")

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo_cpu.yaml"
STAGE_FILE = "demo_stage.json"
# Every process runs one thread, and the two independent branches after the warm-up (GRPO; the SFT
# controls and the scoring) run side by side, one per core. For a model this small,
# intra-op threads buy little, and on a shared machine two threads per process made each SFT step
# several times slower than one (thread contention), while two one-thread processes keep both cores busy.
THREADS = 1


@dataclass(frozen=True)
class DemoConfig:
    scenes: SceneConfig = SceneConfig()
    model: ModelSize = ModelSize()
    # 375 steps of 16: the start counts the training scenes but only part of the held-out ones. The
    # skill appears abruptly: after 312 steps it was still near chance (docs/demo.md).
    warmup: SFTSettings = SFTSettings(epochs=1.5)
    # The controls' optimizer settings; their learning rate, schedule, batch of prompts and number of
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
    """(prompts per optimizer step, prompts over the run) of the one-process GRPO run of these
    recipe fields."""
    per_step, _ = step_batch(SimpleNamespace(**{"gradient_accumulation_steps": 1, **fields}), world_size=1)
    return per_step, per_step * fields["max_steps"]


def _cli_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def start_cmd(cmd: list[str], log_file: Path) -> tuple[subprocess.Popen, list[str], Path, float]:
    """Start an entry point in the background, its output in `log_file`."""
    log.info("$ %s", " ".join(cmd))
    with log_file.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=_child_env())
    return proc, cmd, log_file, time.perf_counter()


def wait_cmd(job: tuple[subprocess.Popen, list[str], Path, float]) -> None:
    """Wait for a started entry point; fail loudly with the tail of its log on error."""
    proc, cmd, log_file, start = job
    if proc.wait() != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{cmd[2]} exited {proc.returncode} (log {log_file}):\n{tail}")
    log.info("  %s done in %.0f s (log %s)", cmd[2], time.perf_counter() - start, log_file)


def run_cmd(cmd: list[str], log_file: Path) -> None:
    wait_cmd(start_cmd(cmd, log_file))


def _child_env() -> dict:
    env = dict(os.environ)
    # The repository's packages resolve from any working directory and in an uninstalled checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One thread per process (see THREADS).
    env.setdefault("OMP_NUM_THREADS", str(THREADS))
    return env


def start_grpo(start: Path, train_jsonl: Path, out: Path, overrides: dict, logs: Path):
    args = {"model_name_or_path": str(start), "dataset_name": str(train_jsonl), "output_dir": str(out), **overrides}
    cmd = [sys.executable, "-m", "r1v_job", "--config", str(RECIPE)]
    for name, value in args.items():
        cmd += [f"--{name}", _cli_value(value)]
    return start_cmd(cmd, logs / "grpo.log")


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

    fields = recipe_fields(cfg.grpo)
    per_step, n_examples = grpo_examples(fields)
    if n_examples > cfg.scenes.train:
        # Fewer rows would make GRPO loop over them again while the controls see each row once.
        raise ValueError(f"GRPO needs {n_examples} training scenes (max_steps {fields['max_steps']} x {per_step} prompts "
                         f"per step) but SceneConfig.train draws {cfg.scenes.train}")

    import torch

    torch.set_num_threads(THREADS)  # this process's own training (warm-up, SFT controls); see THREADS
    scenes = timed("scenes", write_scenes, out / "scenes", cfg.scenes)

    start_dir = out / "models" / "start"
    fp_start = _fingerprint(asdict(cfg.scenes), asdict(cfg.model), asdict(cfg.warmup))
    if not _done(start_dir, fp_start):
        timed("warmup", build_start_model, scenes.warmup, _fresh(start_dir), cfg.model, cfg.warmup)
        _mark(start_dir, fp_start)

    # GRPO gets exactly the first n_examples rows, one epoch: the controls then train on the same rows.
    grpo_overrides = {**cfg.grpo, "max_train_samples": n_examples}
    grpo_dir = out / "grpo"
    fp_grpo = _fingerprint(fp_start, fields, grpo_overrides, RECIPE.read_text())
    grpo_job = None
    if not _done(grpo_dir, fp_grpo):
        grpo_started = time.perf_counter()
        grpo_job = start_grpo(start_dir, scenes.train, _fresh(grpo_dir), grpo_overrides, logs)

    try:
        # While GRPO trains (its own process): the SFT controls, and the scores of the models that exist.
        splits = {"heldout": scenes.eval_ood, "in_dist": scenes.eval_id}
        eval_root = out / "eval"

        def score(name: str, model_dir: Path, ckpts: Path | None, fp_model: str) -> None:
            started = time.perf_counter()
            for split, data in splits.items():
                folder = eval_root / name / split
                fp_eval = _fingerprint(fp_model, asdict(cfg.scenes), cfg.eval_prompts, cfg.eval_max_new_tokens)
                if _done(folder, fp_eval):
                    if not pushgateway:
                        continue
                    # Finished before: eval_job reuses its results and only pushes them.
                else:
                    _fresh(folder)
                # Every checkpoint is scored on the held-out split (the accuracy curve); the
                # in-distribution split is scored for the final models only. The run label names
                # the split: a Pushgateway push replaces its whole {run, checkpoint} group.
                evaluate(model_dir, data, folder, split, cfg, logs, checkpoints=ckpts if split == "heldout" else None,
                         pushgateway=pushgateway, run=f"{run_name}-{name}-{split}")
                _mark(folder, fp_eval)
            timings["evaluation"] = round(timings.get("evaluation", 0.0) + time.perf_counter() - started, 1)

        score("start", start_dir, None, fp_start)
        # Same rows, same batch of prompts per step, hence the same number of optimizer steps, and
        # checkpoints at the same steps as GRPO's for the accuracy curve. AdamW's step size is set by
        # the learning rate whatever the scale of the loss, so equal rates, schedules and step counts
        # give every run the same budget of parameter movement: only the learning signal differs.
        control = replace(cfg.control, batch_size=per_step, epochs=1.0, max_steps=-1,
                          learning_rate=float(fields["learning_rate"]))
        for kind in CONTROLS:
            name = f"sft_{kind}"
            control_dir = out / "models" / name
            fp_control = _fingerprint(fp_start, kind, n_examples, asdict(control), fields.get("save_steps"))
            if not _done(control_dir, fp_control):
                timed(name, supervised_control, start_dir, scenes.train, n_examples, kind, _fresh(control_dir),
                      control, save_steps=fields.get("save_steps"))
                _mark(control_dir, fp_control)
            score(name, control_dir, control_dir / "_trainer", fp_control)
        if grpo_job is not None:
            wait_cmd(grpo_job)
            timings["grpo"] = round(time.perf_counter() - grpo_started, 1)
            _mark(grpo_dir, fp_grpo)
    except BaseException:
        if grpo_job is not None and grpo_job[0].poll() is None:
            grpo_job[0].kill()  # no orphaned trainer when the other branch fails or is interrupted
        raise
    score("grpo", grpo_dir, grpo_dir, fp_grpo)

    summary = report.build_summary(eval_root, grpo_dir, cfg.eval_prompts, n_examples=n_examples, per_step=per_step,
                                   max_steps=fields["max_steps"])
    summary["timings_seconds"] = {**timings, "total": round(time.perf_counter() - t0, 1)}
    report.write_report(summary, out)
    if pushgateway:
        report.push_summary(summary, pushgateway, run_name)
    return summary
