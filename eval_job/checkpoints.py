"""What to score: every complete `checkpoint-N/` in step order, then the final model.

The trainer writes checkpoints in transformers' layout; one is complete when its
`trainer_state.json` (written last) parses and its weights are whole (r1v_common.checkpoints'
rules, without the optimizer states only a resume needs), so a half-written checkpoint is never scored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

# The trainer's own rules for what a complete checkpoint is (stdlib only: no trl in this image).
from r1v_common.checkpoints import COMPLETION_MARKER
from r1v_common.checkpoints import checkpoint_problem, checkpoints_by_step, final_weights, marker_problem, read_marker

logger = logging.getLogger(__name__)

FINAL = "final"


@dataclass(frozen=True)
class Target:
    name: str  # "checkpoint-N" or "final": the `checkpoint` grouping label and the output folder
    path: Path
    step: int


def _global_step(path: Path) -> int | None:
    try:
        step = json.loads(path.read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def find_checkpoints(directory: str | Path) -> list[Target]:
    """Complete checkpoint-N folders of `directory`, in step order."""
    found = []
    for step, path in checkpoints_by_step(directory):
        problem = checkpoint_problem(path, training_state=False)
        if problem:
            logger.info("skipping %s: %s", path, problem)
            continue
        recorded = _global_step(path / "trainer_state.json")
        found.append(Target(path.name, path, step if recorded is None else recorded))
    return sorted(found, key=lambda t: t.step)


def final_step(model_dir: Path, checkpoints: list[Target]) -> int:
    """The final model's step: the completion marker's, else the trainer state's, else the last
    checkpoint's, else 0 (a base model that was never trained)."""
    for name in (COMPLETION_MARKER, "trainer_state.json"):
        step = _global_step(model_dir / name)
        if step is not None:
            return step
    return checkpoints[-1].step if checkpoints else 0


def find_targets(model_dir: str | Path, checkpoints_dir: str | Path | None = None) -> list[Target]:
    """Checkpoints (when `checkpoints_dir` is given) in step order, then the final model."""
    model_dir = Path(model_dir)
    targets = find_checkpoints(checkpoints_dir) if checkpoints_dir else []
    if (model_dir / "config.json").is_file():
        targets.append(Target(FINAL, model_dir, final_step(model_dir, targets)))
    elif targets:
        logger.warning("no final model in %s (no config.json): scoring the checkpoints only", model_dir)
    return targets


def model_identity(path: Path) -> dict:
    """What says the weights at `path` are the ones scored before: each weights file's size and
    mtime (a digest of 4 GB per checkpoint on every rerun would cost minutes), plus config.json's."""
    files = [*final_weights(path), path / "config.json"]
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


def same_weights(final: Target, checkpoints: list[Target]) -> Target | None:
    """The checkpoint whose weights files are the final model's, byte for byte, else None.

    The trainer saves the final model at the last step, usually beside a checkpoint of that step;
    scoring it twice costs a whole evaluation. Only checkpoints of the final step are candidates,
    and the final model's sizes and sha256 come from its completion marker (no marker: no reuse),
    so a rerun hashes at most those checkpoints' weights once."""
    record = read_marker(final.path, COMPLETION_MARKER)
    if record is None or record.get("global_step") != final.step:
        return None
    for candidate in reversed(checkpoints):
        if candidate.step != final.step:
            continue
        if {f.name for f in final_weights(candidate.path)} == set(record.get("files") or {}) \
                and marker_problem(candidate.path, record) is None:
            return candidate
    return None
