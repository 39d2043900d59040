"""Warm-up trajectories for docs/demo-history.md: the start rule's dev checks every 25 steps, with a
checkpoint at each check (score them on any split with eval_job --checkpoints), without stopping;
with --stop, the start exactly as the demo chooses it (under other threads or init seeds).

    python -m demo.explore_start OUT --seed N [--steps 400] [--threads 1] [--lr 1e-3] [--model-seed M] [--stop]
"""
import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from demo.config import FULL, with_seed
from demo.scenes import write_heldout, write_training_scenes
from demo.start import build_start_model


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=FULL.warmup.max_steps)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=FULL.warmup.learning_rate)
    ap.add_argument("--model-seed", type=int, help="the random init's seed (default: --seed)")
    ap.add_argument("--stop", action="store_true", help="stop where the demo's start rule stops")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    torch.set_num_threads(args.threads)
    cfg = with_seed(FULL, args.seed)
    scenes = write_training_scenes(args.out / "scenes", cfg.scenes)
    write_heldout(args.out / "scenes", cfg.scenes)
    info = build_start_model(scenes.warmup, scenes.dev, args.out / "start", args.out / "start-init", cfg.model,
                             replace(cfg.warmup, max_steps=args.steps, learning_rate=args.lr),
                             replace(cfg.rule, stop=args.stop),
                             model_seed=args.seed if args.model_seed is None else args.model_seed)
    print(json.dumps([(c["step"], round(100 * c["dev_accuracy"], 1)) for c in info["checks"]]))


if __name__ == "__main__":
    main()
