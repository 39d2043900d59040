"""The whole miniature R1-V over several seeds, end to end.

Per seed: training scenes -> the Instruct stage until the start rule (demo/start.py) -> the OOD
split this run scores (validation for design runs, held-out for the demo) ->
GRPO (`python -m r1v_job --config recipes/demo_cpu.yaml ...`) beside the two SFT controls on the rows
GRPO trains on -> OOD and in-distribution scores (eval_job, cot and direct prompts, every
checkpoint on the OOD split). Then the report over seeds (demo/report.py).

Every stage runs in its own process, at most `workers` at a time (one per core), each with
`threads` intra-op threads; their output goes to SEED_DIR/logs/STAGE.log and the terminal shows one
line per stage, a progress line while stages run, and the final table. Each stage records a
fingerprint of its settings; a rerun with the same settings reuses the finished stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from demo import report
from demo.config import FULL, RECIPE, REPO, DemoConfig, with_seed
from demo.layout import Layout, SeedLayout
from demo.scenes import write_ood_split

# For a model this small intra-op threads buy little: on a shared 2-core machine two threads per
# process made SFT steps several times slower than one (contention), while two one-thread processes
# side by side keep both cores busy. DemoConfig.threads and .workers set them.


def _cli_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def recipe_args(overrides: dict) -> list[str]:
    args = ["--config", str(RECIPE)]
    for name, value in overrides.items():
        args += [f"--{name}", _cli_value(value)]
    return args


def read_recipe(overrides: dict):
    """The GRPO recipe with `overrides`, read by the trainer's own parser (TrlParser): a bad field
    or value fails here, before any work, as it would in the trainer."""
    import warnings

    from r1v_job.grpo import parse_args

    with warnings.catch_warnings():  # transformers' deprecation notes belong to the trainer's log, not here
        warnings.simplefilter("ignore", FutureWarning)
        return parse_args(recipe_args(overrides))


def grpo_plan(cfg: DemoConfig) -> dict:
    """The numbers the controls and the report take from the GRPO recipe."""
    from r1v_job.config import step_batch
    from r1v_job.restarts import last_step

    script, training, _ = read_recipe(cfg.grpo)
    per_step, _ = step_batch(training, world_size=1)
    steps = last_step(training.max_steps, script.stop_at_step)
    n_examples = per_step * steps
    if n_examples > cfg.scenes.train:
        # Fewer rows would make GRPO loop over them again while the controls see each row once.
        raise ValueError(f"GRPO needs {n_examples} training scenes (max_steps {steps} x {per_step} prompts per step) "
                         f"but SceneConfig.train draws {cfg.scenes.train}")
    return {"per_step": per_step, "max_steps": steps, "n_examples": n_examples,
            "learning_rate": float(training.learning_rate), "save_steps": int(training.save_steps),
            "seed": int(training.seed)}


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    # The repository's packages resolve from any working directory and in an uninstalled checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass
class Stage:
    """One process of one seed's pipeline."""

    seed: int
    name: str  # start, grpo, controls, score_grpo
    cmd: list[str]
    fingerprint: str
    outputs: list[Path]  # cleared before a fresh run
    needs: tuple[str, ...] = ()
    before: object = None  # called in this process just before the stage starts
    started: float = 0.0
    seconds: float = 0.0
    reused: bool = False
    progress: object = None  # log -> short text

    @property
    def key(self) -> tuple[int, str]:
        return self.seed, self.name


def _marker(layout: SeedLayout, name: str) -> Path:
    return layout.root / "stages" / f"{name}.json"


def _done(layout: SeedLayout, stage: Stage) -> bool:
    try:
        return json.loads(_marker(layout, stage.name).read_text())["fingerprint"] == stage.fingerprint
    except (OSError, ValueError, KeyError):
        return False


_GRPO_STEP = re.compile(r"step (\d+)/(\d+) \| reward ([\d.]+)")
_START_STEP = re.compile(r"Instruct step (\d+): dev accuracy \(\w+\) ([\d.]+)%")


def _last(pattern: re.Pattern, text: str):
    found = pattern.findall(text[-20000:])
    return found[-1] if found else None


def grpo_progress(text: str) -> str:
    m = _last(_GRPO_STEP, text)
    return f"step {m[0]}/{m[1]}, reward {float(m[2]):.2f}" if m else "starting"


def start_progress(text: str) -> str:
    m = _last(_START_STEP, text)
    return f"Instruct step {m[0]}, dev {m[1]}%" if m else "drawing scenes / starting"


def eval_progress(text: str) -> str:
    scored = text.count("evaluated ")
    return f"{scored} model-split scored" if scored else "training" if "'loss'" in text else "starting"


class SeedPipeline:
    """The stages of one seed, with their commands, dependencies and fingerprints."""

    def __init__(self, layout: SeedLayout, cfg: DemoConfig, plan: dict, pushgateway: str | None, run: str):
        self.layout, self.cfg, self.plan = layout, cfg, plan
        self.pushgateway, self.run = pushgateway, run

    def stages(self) -> list[Stage]:
        L, cfg = self.layout, self.cfg
        stage = [sys.executable, "-m", "demo.stage"]
        push = ["--pushgateway", self.pushgateway, "--run", self.run] if self.pushgateway else []
        # Intra-op threads can change the float sums, so they are part of every stage's settings.
        fp_start = _fingerprint(asdict(cfg.scenes), asdict(cfg.model), asdict(cfg.warmup), asdict(cfg.rule),
                                cfg.arm, cfg.threads)
        grpo_overrides = {**cfg.grpo, "model_name_or_path": str(L.start), "dataset_name": str(L.scenes.train),
                          "output_dir": str(L.grpo), "max_train_samples": self.plan["n_examples"],
                          "seed": self.plan["seed"] + L.seed}
        fp_grpo = _fingerprint(fp_start, grpo_overrides, RECIPE.read_text())
        evals = (cfg.eval_prompts, cfg.eval_max_new_tokens, cfg.eval_batch_size, asdict(cfg.scenes))
        fp_controls = _fingerprint(fp_start, asdict(cfg.control), self.plan, evals, push)  # pushed where, as which run
        return [
            Stage(L.seed, "start", [*stage, "start", str(L.root)], fp_start, [L.start, L.start_init],
                  progress=start_progress),
            Stage(L.seed, "grpo", [sys.executable, "-m", "r1v_job", *recipe_args(grpo_overrides)], fp_grpo, [L.grpo],
                  needs=("start",), before=lambda: write_ood_split(L.scenes.root, cfg.scenes), progress=grpo_progress),
            Stage(L.seed, "controls", [*stage, "controls", str(L.root), *push], fp_controls,
                  [L.root / "models" / "sft_answers", L.root / "models" / "sft_cot", L.root / "eval" / "start",
                   L.root / "eval" / "sft_answers", L.root / "eval" / "sft_cot"],
                  needs=("start",), before=lambda: write_ood_split(L.scenes.root, cfg.scenes), progress=eval_progress),
            Stage(L.seed, "score_grpo", [*stage, "score", str(L.root), "--model", "grpo", *push],
                  _fingerprint(fp_grpo, evals, push), [L.root / "eval" / "grpo"], needs=("grpo",),
                  progress=eval_progress),
        ]


# When a core frees up, the stage with the longest chain behind it goes first: a seed's start unlocks
# its GRPO run (the longest stage) and its controls. (GRPO first left the last seed's start waiting
# until two GRPO runs had finished, and that seed's chain then ran alone on one core.)
PRIORITY = {"start": 0, "grpo": 1, "controls": 2, "score_grpo": 3}


class Runner:
    """Runs the stages of every seed, `workers` processes at a time, respecting dependencies."""

    def __init__(self, layout: Layout, cfg: DemoConfig, echo=print):
        self.layout, self.cfg, self.echo = layout, cfg, echo
        self.t0 = time.perf_counter()

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def _run(self, stage: Stage) -> None:
        L = self.layout.seed(stage.seed)
        if stage.before:
            stage.before()
        for path in stage.outputs:  # a stale half-run must not leak in (a resumed trainer, reused scores)
            shutil.rmtree(path, ignore_errors=True)
        _marker(L, stage.name).unlink(missing_ok=True)
        L.logs.mkdir(parents=True, exist_ok=True)
        log_file = L.log(stage.name)
        with log_file.open("w") as fh:
            proc = subprocess.Popen(stage.cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                    env=_child_env(self.cfg.threads))
            self._procs.append(proc)
            code = proc.wait()
        if code != 0:
            tail = "".join(log_file.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"seed {stage.seed} {stage.name} exited {code}; log {log_file}:\n{tail}")
        _marker(L, stage.name).parent.mkdir(parents=True, exist_ok=True)
        _marker(L, stage.name).write_text(json.dumps({"fingerprint": stage.fingerprint,
                                                      "cmd": stage.cmd}, indent=2) + "\n")

    def run(self, stages: list[Stage]) -> dict:
        done: set[tuple[int, str]] = set()
        pending = list(stages)
        for s in stages:  # finished stages of an earlier run with the same settings
            if _done(self.layout.seed(s.seed), s) and all((s.seed, n) in done for n in s.needs):
                s.reused = True
                done.add(s.key)
                pending.remove(s)
                self.echo(f"[{self._elapsed()}] seed {s.seed} {s.name}: reused (same settings as before)")
                if s.before:
                    s.before()
        total = len(stages)
        self._procs: list[subprocess.Popen] = []
        running: dict = {}
        last_note = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.cfg.workers) as pool:
            try:
                while pending or running:
                    ready = sorted((s for s in pending if all((s.seed, n) in done for n in s.needs)),
                                   key=lambda s: (PRIORITY[s.name], s.seed))
                    while ready and len(running) < self.cfg.workers:
                        s = ready.pop(0)
                        pending.remove(s)
                        s.started = time.perf_counter()
                        self.echo(f"[{self._elapsed()}] seed {s.seed} {s.name}: started "
                                  f"(log {self.layout.seed(s.seed).log(s.name)})")
                        running[pool.submit(self._run, s)] = s
                    finished, _ = wait(running, timeout=5, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        s = running.pop(fut)
                        fut.result()  # a failed stage stops the run with its log's tail
                        s.seconds = round(time.perf_counter() - s.started, 1)
                        done.add(s.key)
                        self.echo(f"[{self._elapsed()}] seed {s.seed} {s.name}: done in {s.seconds:.0f} s "
                                  f"({len(done)}/{total} stages)")
                    if running and time.perf_counter() - last_note >= 30:
                        last_note = time.perf_counter()
                        notes = []
                        for s in running.values():
                            text = self.layout.seed(s.seed).log(s.name).read_text(errors="replace") \
                                if self.layout.seed(s.seed).log(s.name).exists() else ""
                            notes.append(f"seed {s.seed} {s.name}: {s.progress(text)}")
                        self.echo(f"[{self._elapsed()}] running: " + "; ".join(notes))
            except BaseException:
                for proc in self._procs:  # no orphaned trainer when another stage fails or on Ctrl-C
                    if proc.poll() is None:
                        proc.kill()
                raise
        return {f"seed-{s.seed}/{s.name}": (None if s.reused else s.seconds) for s in stages}


def run_demo(out: str | Path = "runs/demo", cfg: DemoConfig = FULL, pushgateway: str | None = None,
             run_name: str = "demo", echo=print) -> dict:
    """Run every stage of every seed into `out`; returns the summary (also out/summary.json)."""
    t0 = time.perf_counter()
    layout = Layout(Path(out).resolve())
    plan = grpo_plan(cfg)  # before any work: bad recipe fields or too few scenes fail here
    echo(f"miniature R1-V: seeds {', '.join(map(str, cfg.seeds))}; GRPO {plan['max_steps']} steps x "
         f"{plan['per_step']} prompts on {plan['n_examples']} training scenes; {cfg.workers} processes x "
         f"{cfg.threads} thread(s); output {layout.root}")
    stages = []
    for seed in cfg.seeds:
        L = layout.seed(seed)
        seed_cfg = with_seed(cfg, seed)
        L.root.mkdir(parents=True, exist_ok=True)
        L.config.write_text(seed_cfg.to_json())
        (L.root / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
        stages += SeedPipeline(L, seed_cfg, plan, pushgateway, run_name).stages()
    timings = Runner(layout, cfg, echo).run(stages)
    summary = report.build_summary(layout, cfg, plan)
    summary["timings_seconds"] = {**timings, "total": round(time.perf_counter() - t0, 1)}
    report.write_report(summary, layout, echo)
    if pushgateway:
        report.push_summary(summary, pushgateway, run_name)
    return summary
