"""Where the demo writes everything: one object shared by the pipeline and the report.

    OUT/
      summary.json, summary.txt, demo_plot.png     the report over all seeds
      seed-N/
        config.json                                the settings this seed ran with
        scenes/{instruct,warmup,dev,train,eval_id}  demo/scenes.py, and the one OOD split the run scores:
        scenes/validation or scenes/eval_ood         (design runs: validation; the demo: eval_ood)
        models/start, models/start-init            the Instruct start and its random init
        models/sft_answers, models/sft_cot         the SFT controls (checkpoints in _trainer/)
        grpo/                                      the trainer's output_dir (checkpoints, final model)
        eval/MODEL/{heldout|validation,in_dist}/   eval_job's --out (scores.json, results)
        logs/STAGE.log                             each stage's full output
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from demo.scenes import Scenes


@dataclass(frozen=True)
class SeedLayout:
    root: Path
    seed: int

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def scenes(self) -> Scenes:
        return Scenes(self.root / "scenes")

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    @property
    def start(self) -> Path:
        return self.root / "models" / "start"

    @property
    def start_init(self) -> Path:
        return self.root / "models" / "start-init"

    def control(self, kind: str) -> Path:
        return self.root / "models" / f"sft_{kind}"

    @property
    def grpo(self) -> Path:
        return self.root / "grpo"

    def model(self, name: str) -> Path:
        """The final weights of model `name` (start, sft_KIND, grpo)."""
        return {"start": self.start, "grpo": self.grpo}.get(name) or self.root / "models" / name

    def checkpoints(self, name: str) -> Path | None:
        """The folder of model `name`'s training checkpoints (None for the start)."""
        if name == "start":
            return None
        return self.grpo if name == "grpo" else self.model(name) / "_trainer"

    def eval(self, name: str, split: str) -> Path:
        return self.root / "eval" / name / split


@dataclass(frozen=True)
class Layout:
    root: Path

    def seed(self, seed: int) -> SeedLayout:
        return SeedLayout(self.root / f"seed-{seed}", seed)

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_txt(self) -> Path:
        return self.root / "summary.txt"

    @property
    def plot(self) -> Path:
        return self.root / "demo_plot.png"
