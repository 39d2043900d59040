"""Stage 1: the demo's seeded scene splits, drawn and written by r1v_job.synthetic.

Disjoint splits, each from its own seed so that no image is shared between them:

- instruct: broad "Instruct" pretraining scenes (INSTRUCT family: the training shapes and colours,
           filler shapes and colours, and, with `instruct_ood`, the scored OOD split's), each with a
           non-counting question (r1v_job.synthetic.INSTRUCT_TASKS): demo/start.py's start model
           learns to see many kinds of objects from them, as Qwen2-VL's pretraining did.
- warmup:  CLEVR-like scenes in the CLEVR-70k schema: the counting rows mixed into the Instruct
           stage (they teach the answer format and counting).
- dev:     CLEVR-like scenes in R1-V's eval format: the start rule's only view of how well the
           start counts (demo/start.py). Training distribution only.
- train:   CLEVR-like scenes in the CLEVR-70k schema, plus each scene's objects (scenes.jsonl, as
           CLEVR ships its scene files): GRPO trains on them, the SFT controls on the same rows, the
           CoT teacher writes its traces from the descriptions.
- eval_id: CLEVR-like scenes in R1-V's eval format (in-distribution check).
- validation: OOD scenes of their own shapes and colours (VALIDATION family), R1-V's eval format:
           every design choice of the demo was made on them (docs/demo.md, "Design choices").
- eval_ood: SuperCLEVR-like scenes in R1-V's eval format: the held-out headline, scored only by the
           finished design (`python -m demo`, the default), never by a design run.

A run scores one OOD split, `SceneConfig.ood_split`, drawn only after the start model is fixed
(`write_ood_split`), so nothing before can read it; the other OOD split is never drawn.

The OOD styles differ from the training style in shapes, colours, object sizes and the range of
counts; they keep CLEVR's floor colour, because SuperCLEVR is rendered with CLEVR's own scene
generator (same floor and lighting), only its objects differ.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from r1v_job.synthetic import (CLEVR_QUESTION, CLEVR_STYLE, COLOURS, SUPERCLEVR_QUESTION, SUPERCLEVR_STYLE,
                               SceneStyle, write_clevr_train, write_instruct_train, write_superclevr_eval)

# Scenes are small on purpose: at 112 px a Qwen2-VL image is 4x4 merged patches = 16 visual tokens,
# which keeps every forward pass (SFT, rollouts, evaluation) cheap on 2 CPU cores. (At 56 px, 4
# tokens, the tiny model never learned to count in our trials: each token then covers too many objects.)
DEFAULT_SIZE = 112
SCENE_SPLITS = ("warmup", "dev", "train", "eval_id", "eval_ood", "instruct", "validation")
# The OOD splits a run can score, and the folder each lives in.
OOD_SPLITS = {"validation": "validation", "heldout": "eval_ood"}


def _palette(*names: str) -> tuple[tuple[int, int, int], ...]:
    return tuple(COLOURS[n] for n in names)


# The families of shapes and colours: training (CLEVR's), filler (seen only in the Instruct
# stage), validation and held-out (SuperCLEVR-like). tests/demo checks that they are disjoint.
FAMILIES = {
    "training": (CLEVR_STYLE.shapes, CLEVR_STYLE.colours),
    "filler": (("pentagon", "trapezoid", "semicircle"), _palette("navy", "khaki", "mint", "sky")),
    "validation": (("star", "hexagon", "ring"), _palette("lime", "salmon", "lavender", "olive", "maroon")),
    "heldout": (SUPERCLEVR_STYLE.shapes, SUPERCLEVR_STYLE.colours),
}


@dataclass(frozen=True)
class SceneConfig:
    size: int = DEFAULT_SIZE
    seed: int = 0
    warmup: int = 2667
    dev: int = 100
    train: int = 2000
    eval_id: int = 200
    eval_ood: int = 200
    # The Instruct stage: `instruct` non-counting rows plus `warmup` counting rows (75/25).
    instruct: int = 8000
    instruct_radius: tuple[float, float] = (0.045, 0.115)
    # Whether the scored OOD split's shapes and colours appear in the Instruct scenes (never in
    # counting rows): chosen on the validation split (docs/demo.md, "Design choices").
    instruct_ood: bool = False
    validation: int = 200
    ood_split: str = "heldout"  # the OOD split this run scores: validation (design runs) or heldout
    train_counts: tuple[int, int] = (1, 6)
    ood_counts: tuple[int, int] = (2, 6)
    floor: tuple[int, int, int] = CLEVR_STYLE.background
    ood_radius: tuple[float, float] = (0.07, 0.115)
    # One object per 28-px cell, the patch a Qwen2-VL visual token covers (14-px patches, 2x2
    # merged): see r1v_job.synthetic._cell_places and docs/demo.md. 0 places objects anywhere.
    cell: int = 28

    def train_style(self) -> SceneStyle:
        return replace(CLEVR_STYLE, counts=self.train_counts, background=self.floor, cell=self.cell)

    def heldout_style(self) -> SceneStyle:
        # Other shapes and colours than training (r1v_job.synthetic's SuperCLEVR-like style), other
        # sizes, on the training floor (see the module docstring).
        return replace(SUPERCLEVR_STYLE, counts=self.ood_counts, background=self.floor, radius=self.ood_radius,
                       cell=self.cell)

    def validation_style(self) -> SceneStyle:
        # The held-out split's analogue for design choices: the same sizes and counts, its own
        # shapes and colours.
        shapes, colours = FAMILIES["validation"]
        return replace(self.heldout_style(), name="validation", shapes=shapes, colours=colours)

    def ood_style(self) -> SceneStyle:
        if self.ood_split not in OOD_SPLITS:
            raise ValueError(f"ood_split {self.ood_split!r}: expected one of {', '.join(OOD_SPLITS)}")
        return self.validation_style() if self.ood_split == "validation" else self.heldout_style()

    def instruct_style(self) -> SceneStyle:
        families = ["training", "filler"] + ([self.ood_split] if self.instruct_ood else [])
        return replace(CLEVR_STYLE, name="instruct", shapes=sum((FAMILIES[f][0] for f in families), ()),
                       colours=sum((FAMILIES[f][1] for f in families), ()), radius=self.instruct_radius,
                       counts=self.train_counts, background=self.floor, cell=self.cell)

    def split_seed(self, split: str) -> int:
        # Distinct per split: r1v_job.synthetic seeds its generator with (style name, seed).
        return self.seed * 10 + SCENE_SPLITS.index(split)


@dataclass(frozen=True)
class Scenes:
    """Where a seed's splits live (see demo.layout.SeedLayout.scenes)."""

    root: Path

    @property
    def instruct(self) -> Path:  # CLEVR-70k schema, non-counting questions
        return self.root / "instruct" / "train.jsonl"

    @property
    def warmup(self) -> Path:  # CLEVR-70k schema
        return self.root / "warmup" / "train.jsonl"

    @property
    def dev(self) -> Path:  # R1-V eval format
        return self.root / "dev" / "questions.jsonl"

    @property
    def train(self) -> Path:  # CLEVR-70k schema
        return self.root / "train" / "train.jsonl"

    @property
    def train_scenes(self) -> Path:  # the train rows' objects, one row per image
        return self.root / "train" / "scenes.jsonl"

    @property
    def eval_id(self) -> Path:  # R1-V eval format
        return self.root / "eval_id" / "questions.jsonl"

    @property
    def eval_ood(self) -> Path:  # R1-V eval format, SuperCLEVR-like
        return self.root / "eval_ood" / "questions.jsonl"

    def ood(self, split: str) -> Path:  # R1-V eval format: OOD_SPLITS' validation or heldout
        return self.root / OOD_SPLITS[split] / "questions.jsonl"


def _manifest(cfg: SceneConfig, part: str) -> dict:
    return {"part": part, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}}


def _draw_once(root: Path, cfg: SceneConfig, part: str, draw) -> None:
    manifest = root / f"{part}.json"
    wanted = _manifest(cfg, part)
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return
    draw()
    manifest.write_text(json.dumps(wanted, indent=2) + "\n")  # last: its presence means the draw is complete


def write_training_scenes(root: str | Path, cfg: SceneConfig = SceneConfig()) -> Scenes:
    """Every training-distribution split under `root` (deterministic for `cfg`); reuses a complete
    earlier draw."""
    scenes = Scenes(Path(root))
    style = cfg.train_style()

    def draw():
        write_instruct_train(scenes.instruct.parent, cfg.instruct, cfg.size, cfg.split_seed("instruct"),
                             cfg.instruct_style())
        write_clevr_train(scenes.warmup.parent, cfg.warmup, cfg.size, cfg.split_seed("warmup"), style)
        write_superclevr_eval(scenes.dev.parent, cfg.dev, cfg.size, cfg.split_seed("dev"), style,
                              question=CLEVR_QUESTION)
        write_clevr_train(scenes.train.parent, cfg.train, cfg.size, cfg.split_seed("train"), style, describe=True)
        write_superclevr_eval(scenes.eval_id.parent, cfg.eval_id, cfg.size, cfg.split_seed("eval_id"), style,
                              question=CLEVR_QUESTION)

    _draw_once(scenes.root, cfg, "training", draw)
    return scenes


def write_ood_split(root: str | Path, cfg: SceneConfig = SceneConfig()) -> Path:
    """The OOD split this run scores (`cfg.ood_split`); the pipeline calls it only once the start
    model is fixed."""
    scenes = Scenes(Path(root))
    path = scenes.ood(cfg.ood_split)
    _draw_once(scenes.root, cfg, cfg.ood_split, lambda: write_superclevr_eval(
        path.parent, cfg.validation if cfg.ood_split == "validation" else cfg.eval_ood, cfg.size,
        cfg.split_seed(OOD_SPLITS[cfg.ood_split]), cfg.ood_style(), question=SUPERCLEVR_QUESTION))
    return path
