"""`python -m demo [--out runs/demo] [--seeds 0,1,2] [--split heldout|validation] [--arm study|verbal]
[--instruct-ood in|out] [--threads N] [--workers N] [--pushgateway URL] [--quick] [--set field=value ...]`

Miniature R1-V on a laptop: see demo/pipeline.py for the stages and docs/demo.md for the results.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import yaml

from demo.config import FULL, QUICK
from demo.pipeline import run_demo
from demo.scenes import OOD_SPLITS
from demo.sft import ARMS
from r1v_job.preflight import UsageError


def _override(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected FIELD=VALUE (a recipes/demo_cpu.yaml field)")
    return name.lstrip("-"), yaml.safe_load(value)  # typed as a YAML value; the trainer's parser checks it


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2")
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description="Miniature R1-V: GRPO vs SFT on synthetic counting scenes, "
                                "scored out of distribution, over several seeds.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seeds", type=_seeds, help=f"comma-separated seeds (default: {','.join(map(str, FULL.seeds))})")
    p.add_argument("--split", choices=OOD_SPLITS, help="the OOD split to score: heldout (the demo, default) or "
                   "validation (design runs; docs/demo.md, 'Design choices')")
    p.add_argument("--arm", choices=ARMS, help=f"the start's answer format (default: {FULL.arm})")
    p.add_argument("--instruct-ood", choices=("in", "out"), help="whether the scored OOD split's shapes and colours "
                   f"appear in the Instruct scenes (default: {'in' if FULL.scenes.instruct_ood else 'out'})")
    p.add_argument("--threads", type=int, help=f"intra-op threads per process (default: {FULL.threads})")
    p.add_argument("--workers", type=int, help=f"stage processes side by side (default: {FULL.workers})")
    p.add_argument("--pushgateway", metavar="URL", help="push the scores to this Pushgateway")
    p.add_argument("--run", default="demo", help="run label of the pushed scores (default: demo)")
    p.add_argument("--quick", action="store_true", help="a few steps on a handful of scenes (the test's run)")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="FIELD=VALUE",
                   help="override a GRPO recipe field (recipes/demo_cpu.yaml), e.g. --set learning_rate=1e-4")
    args = p.parse_args(argv)
    for name in ("threads", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: must be at least 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = QUICK if args.quick else FULL
    scenes = replace(cfg.scenes, **({"ood_split": args.split} if args.split else {}),
                     **({"instruct_ood": args.instruct_ood == "in"} if args.instruct_ood else {}))
    cfg = replace(cfg, scenes=scenes, arm=args.arm or cfg.arm, grpo={**cfg.grpo, **dict(args.overrides)},
                  **{k: getattr(args, k) for k in ("seeds", "threads", "workers") if getattr(args, k) is not None})
    try:
        run_demo(args.out, cfg, pushgateway=args.pushgateway, run_name=args.run, echo=lambda s: print(s, flush=True))
    except (UsageError, ValueError) as err:  # a recipe field the trainer refuses, or settings that cannot run
        # together: say which, without a traceback
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
