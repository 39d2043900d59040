"""The demo's settings: one DemoConfig per run, written to each seed's config.json so that every
stage process (demo/stage.py) reads the same settings the orchestrator (demo/pipeline.py) used."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from demo.scenes import SceneConfig
from demo.sft import ModelSize, SFTSettings
from demo.start import StartRule

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo_cpu.yaml"


@dataclass(frozen=True)
class DemoConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    scenes: SceneConfig = SceneConfig()
    model: ModelSize = ModelSize()
    # The Instruct stage's budget (and the horizon of its linear schedule); demo/start.py's rule ends
    # it earlier. Room for the latest dev crossings seen (step 1,200 in the design runs, docs/demo.md)
    # plus the margin.
    warmup: SFTSettings = SFTSettings(max_steps=1500)
    # Dev checked every 100 steps; 100 steps trained past the crossing (the counting skill has only
    # just arrived at the crossing).
    rule: StartRule = StartRule(every=100, margin=100)
    # The start's answer format: "study" (<think>There are N objects.</think>) or "verbal" (the
    # thinking enumerates the objects, 1 2 ... N). "verbal", by demo/design.py's arm rule on the
    # validation split (docs/demo.md, "Design choices"), as SceneConfig.instruct_ood = False by its
    # pretraining rule.
    arm: str = "verbal"
    # The controls' optimizer settings; their learning rate, schedule, batch of prompts and number of
    # steps are GRPO's (see stage.control_settings), so that only the learning signal differs.
    control: SFTSettings = SFTSettings(warmup_ratio=0.0)
    # Overrides of recipes/demo_cpu.yaml fields, as `--field value` for r1v_job.
    grpo: dict = field(default_factory=dict)
    eval_prompts: tuple[str, ...] = ("cot", "direct")
    eval_batch_size: int = 64
    # Room for the CoT teacher's longest trace (6 objects, ~45 tokens); a model that rambles past it
    # is cut off and counted as a parse failure. Models that stop early cost nothing extra.
    eval_max_new_tokens: int = 64
    # Intra-op threads per process, and processes side by side (demo/pipeline.py says why).
    threads: int = 1
    workers: int = 2

    @property
    def seed(self) -> int:
        """The seed of a one-seed config (see with_seed)."""
        if len(self.seeds) != 1:
            raise ValueError(f"a stage runs one seed, this config holds {self.seeds}")
        return self.seeds[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DemoConfig:
        return _build(cls, json.loads(text))

    @classmethod
    def read(cls, path: Path) -> DemoConfig:
        return cls.from_json(path.read_text())


def _build(kind, data):
    """The dataclass `kind` from its asdict() form (tuples restored)."""
    values = {}
    for f in fields(kind):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(kind(), f.name) if not is_dataclass(f.default) else f.default
        if is_dataclass(default):
            value = _build(type(default), value)
        elif isinstance(default, tuple):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[f.name] = value
    return kind(**values)


FULL = DemoConfig()
QUICK = DemoConfig(
    seeds=(0, 1),
    scenes=SceneConfig(instruct=16, warmup=64, dev=8, train=16, eval_id=8, eval_ood=8, validation=8),
    # Enough steps to learn the answer format, so that GRPO's rewards vary within groups; any dev
    # accuracy ends the warm-up at its one check: the quick run tests the plumbing, not counting.
    warmup=SFTSettings(max_steps=24, batch_size=8, learning_rate=3e-3),
    rule=StartRule(every=24, threshold=0.0),
    control=SFTSettings(warmup_ratio=0.0),
    grpo={"max_steps": 4, "save_steps": 2, "num_generations": 4, "per_device_train_batch_size": 8},
    eval_batch_size=8,
    eval_max_new_tokens=48,
)


def with_seed(cfg: DemoConfig, seed: int) -> DemoConfig:
    """The settings of one seed's run: `seed` draws its scenes, the model's random init, the
    warm-up's and the controls' data order, and offsets GRPO's sampling seed (the recipe's `seed`)."""
    return replace(cfg, seeds=(seed,), scenes=replace(cfg.scenes, seed=seed),
                   warmup=replace(cfg.warmup, seed=seed), control=replace(cfg.control, seed=seed))
