"""`python -m demo [--out runs/demo] [--pushgateway URL] [--quick] [--seed N] [--set field=value ...]`

Miniature R1-V on a laptop: see demo/pipeline.py for the stages and docs/demo.md for the results.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import yaml

from demo.pipeline import FULL, QUICK, run_demo


def _override(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected FIELD=VALUE (a recipes/demo_cpu.yaml field)")
    return name.lstrip("-"), yaml.safe_load(value)  # YAML typing, as in the recipe itself


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description="Miniature R1-V: GRPO vs SFT on synthetic counting scenes, "
                                "scored out of distribution.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--pushgateway", metavar="URL", help="push the scores to this Pushgateway")
    p.add_argument("--run", default="demo", help="run label of the pushed scores (default: demo)")
    p.add_argument("--quick", action="store_true", help="a few steps on a handful of scenes (the test's run)")
    p.add_argument("--seed", type=int, default=0, help="scene seed: other scenes and another warm-up order (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="FIELD=VALUE",
                   help="override a GRPO recipe field (recipes/demo_cpu.yaml), e.g. --set learning_rate=1e-4")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = QUICK if args.quick else FULL
    cfg = replace(cfg, scenes=replace(cfg.scenes, seed=args.seed), grpo={**cfg.grpo, **dict(args.overrides)})
    try:
        run_demo(args.out, cfg, pushgateway=args.pushgateway, run_name=args.run)
    except ValueError as err:  # settings that cannot run together: say which, without a traceback
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
