"""Stage 1: the demo's seeded scene splits, drawn with r1v_job.synthetic.

Four disjoint splits, each from its own seed so that no image is shared between them:

- warmup:  CLEVR-like scenes with their counts; a short supervised run on them teaches the
           random-init model the answer format and counting, i.e. makes the "Instruct" starting
           point (demo/warmup.py).
- train:   CLEVR-like scenes in the CLEVR-70k schema (image, problem, solution); GRPO trains on them,
           and the SFT control trains on exactly the rows GRPO saw, with exact answers.
- eval_id: CLEVR-like held-out scenes in R1-V's eval format (in-distribution check).
- eval_ood: SuperCLEVR-like held-out scenes in R1-V's eval format (the headline, as in R1-V).

The held-out style differs from the training style in shapes, colours, object sizes and the range
of counts; it keeps CLEVR's floor colour, because SuperCLEVR is rendered with CLEVR's own scene
generator (same floor and lighting), only its objects differ.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from r1v_job.synthetic import (CLEVR_QUESTION, CLEVR_STYLE, SUPERCLEVR_QUESTION, SUPERCLEVR_STYLE, SceneStyle,
                               write_split)

# Scenes are small on purpose: at 112 px a Qwen2-VL image is 4x4 merged patches = 16 visual tokens,
# which keeps every forward pass (SFT, rollouts, evaluation) cheap on 2 CPU cores. (At 56 px, 4
# tokens, the tiny model never learned to count in our trials: each token then covers too many objects.)
DEFAULT_SIZE = 112


def train_style(counts: tuple[int, int], floor: tuple[int, int, int], cell: int) -> SceneStyle:
    return replace(CLEVR_STYLE, counts=counts, background=floor, cell=cell)


def heldout_style(counts: tuple[int, int], floor: tuple[int, int, int],
                  radius: tuple[float, float], cell: int) -> SceneStyle:
    # Other shapes and colours than training (r1v_job.synthetic's SuperCLEVR-like style), other
    # sizes, on the training floor (see the module docstring).
    return replace(SUPERCLEVR_STYLE, counts=counts, background=floor, radius=radius, cell=cell)


@dataclass(frozen=True)
class SceneConfig:
    size: int = DEFAULT_SIZE
    seed: int = 0
    warmup: int = 4000
    train: int = 2000
    eval_id: int = 200
    eval_ood: int = 200
    train_counts: tuple[int, int] = (1, 6)
    ood_counts: tuple[int, int] = (2, 6)
    floor: tuple[int, int, int] = CLEVR_STYLE.background
    ood_radius: tuple[float, float] = (0.07, 0.115)
    # One object per 28-px cell, the patch a Qwen2-VL visual token covers (14-px patches, 2x2
    # merged): see r1v_job.synthetic._cell_places and docs/demo.md. 0 places objects anywhere.
    cell: int = 28


@dataclass(frozen=True)
class Scenes:
    warmup: Path  # jsonl: image, problem, count
    train: Path  # jsonl, CLEVR-70k schema
    eval_id: Path  # jsonl, R1-V eval format
    eval_ood: Path  # jsonl, R1-V eval format


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval_rows(folder: Path, style: SceneStyle, n: int, size: int, seed: int, question: str) -> list[dict]:
    return [{"image_path": f"./{rel}", "question": question, "ground_truth": count}
            for rel, count in write_split(folder, style, n, size, seed)]


def write_scenes(out: str | Path, cfg: SceneConfig = SceneConfig()) -> Scenes:
    """Draw every split under `out` (deterministic for `cfg`); reuses a complete earlier draw."""
    out = Path(out)
    manifest = out / "scenes.json"
    paths = Scenes(warmup=out / "warmup" / "data.jsonl", train=out / "train" / "train.jsonl",
                   eval_id=out / "eval_id" / "questions.jsonl", eval_ood=out / "eval_ood" / "questions.jsonl")
    wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return paths

    # Distinct seeds per split: write_split seeds its generator with (style name, seed).
    seeds = {name: cfg.seed * 10 + i for i, name in enumerate(("warmup", "train", "eval_id", "eval_ood"))}
    style = train_style(cfg.train_counts, cfg.floor, cfg.cell)

    warm = [{"image": rel, "problem": CLEVR_QUESTION, "count": count}
            for rel, count in write_split(paths.warmup.parent, style, cfg.warmup, cfg.size, seeds["warmup"])]
    _write_jsonl(paths.warmup, warm)

    train = [{"image": rel, "problem": CLEVR_QUESTION, "solution": f"<answer> {count} </answer>"}
             for rel, count in write_split(paths.train.parent, style, cfg.train, cfg.size, seeds["train"])]
    _write_jsonl(paths.train, train)

    _write_jsonl(paths.eval_id, _eval_rows(paths.eval_id.parent, style, cfg.eval_id, cfg.size, seeds["eval_id"],
                                           CLEVR_QUESTION))
    heldout = heldout_style(cfg.ood_counts, cfg.floor, cfg.ood_radius, cfg.cell)
    _write_jsonl(paths.eval_ood, _eval_rows(paths.eval_ood.parent, heldout, cfg.eval_ood, cfg.size, seeds["eval_ood"],
                                            SUPERCLEVR_QUESTION))
    manifest.write_text(json.dumps(wanted, indent=2) + "\n")  # last: its presence means the draw is complete
    return paths
