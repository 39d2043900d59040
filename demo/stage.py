"""One stage of one seed, in its own process (demo/pipeline.py starts them):

    python -m demo.stage start SEED_DIR              scenes, then the Instruct stage until the start rule stops it
    python -m demo.stage controls SEED_DIR           both SFT controls, then the scores of start and controls
    python -m demo.stage score SEED_DIR --model grpo the scores of a trained model

Settings come from SEED_DIR/config.json (demo.config.DemoConfig) and SEED_DIR/plan.json (the numbers
derived from the GRPO recipe). Everything a stage prints goes to its log, SEED_DIR/logs/STAGE.log.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from demo.config import DemoConfig
from demo.layout import SeedLayout
from demo.scenes import write_training_scenes

def eval_splits(cfg: DemoConfig) -> tuple[str, str]:
    """The splits a run scores: its OOD split (validation or heldout) and the training distribution."""
    return cfg.scenes.ood_split, "in_dist"


def plan(layout: SeedLayout) -> dict:
    return json.loads((layout.root / "plan.json").read_text())


def score(layout: SeedLayout, cfg: DemoConfig, name: str, pushgateway: str | None, run: str) -> None:
    """eval_job on both splits, in this process (its own entry point and arguments): every checkpoint
    on the OOD split (the accuracy curve), the final model only in distribution."""
    from eval_job.cli import main as eval_main

    ood = cfg.scenes.ood_split
    data = {ood: layout.scenes.ood(ood), "in_dist": layout.scenes.eval_id}
    for split in eval_splits(cfg):
        argv = ["--model", str(layout.model(name)), "--data", str(data[split]), "--out", str(layout.eval(name, split)),
                "--prompt", ",".join(cfg.eval_prompts), "--benchmark", split,
                "--batch-size", str(cfg.eval_batch_size), "--max-new-tokens", str(cfg.eval_max_new_tokens)]
        ckpts = layout.checkpoints(name)
        if split == ood and ckpts is not None:
            argv += ["--checkpoints", str(ckpts)]
        if pushgateway:
            # The run label names seed, model and split: a push replaces its whole {run, checkpoint} group.
            argv += ["--pushgateway", pushgateway, "--run", f"{run}-s{layout.seed}-{name}-{split}"]
        code = eval_main(argv)
        if code != 0:
            raise RuntimeError(f"eval_job {' '.join(argv)} exited {code}")


def control_settings(cfg: DemoConfig, p: dict):
    # Same rows, same batch of prompts per step, hence the same number of optimizer steps, and
    # checkpoints at the same steps as GRPO's for the accuracy curve. AdamW's step size is set by
    # the learning rate whatever the scale of the loss, so equal rates, schedules and step counts
    # give every run the same budget of parameter movement: only the learning signal differs.
    return replace(cfg.control, batch_size=p["per_step"], epochs=1.0, max_steps=-1, learning_rate=p["learning_rate"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo.stage")
    ap.add_argument("stage", choices=["start", "controls", "score"])
    ap.add_argument("seed_dir", type=Path)
    ap.add_argument("--model", default="grpo")
    ap.add_argument("--pushgateway")
    ap.add_argument("--run", default="demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = DemoConfig.read(args.seed_dir / "config.json")
    layout = SeedLayout(args.seed_dir, cfg.seed)

    import torch

    torch.set_num_threads(cfg.threads)
    if args.stage == "start":
        from demo.sft import instruct_rows
        from demo.start import build_start_model

        scenes = write_training_scenes(layout.scenes.root, cfg.scenes)
        rows = instruct_rows(scenes.instruct, scenes.warmup, cfg.warmup.seed, cfg.arm)
        info = build_start_model(rows, scenes.dev, layout.start, layout.start_init, cfg.model, cfg.warmup,
                                 cfg.rule, model_seed=cfg.seed)
        print(json.dumps({"stopped_at": info["stopped_at"], "checks": info["checks"][-1:]}))
    elif args.stage == "controls":
        from demo.sft import CONTROL_KINDS, supervised_control

        p = plan(layout)
        for kind in CONTROL_KINDS:
            supervised_control(layout.start, layout.scenes.train, p["n_examples"], kind, layout.control(kind),
                               control_settings(cfg, p), save_steps=p["save_steps"])
        for name in ("start", *(f"sft_{k}" for k in CONTROL_KINDS)):
            score(layout, cfg, name, args.pushgateway, args.run)
    else:
        score(layout, cfg, args.model, args.pushgateway, args.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
