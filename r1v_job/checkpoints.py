"""Where a run resumes from, and the marker that says it finished."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

# The trainer writes it after the final model; the evaluator's `--wait-for marker` waits on it.
COMPLETION_MARKER = "training_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it is complete.

    transformers writes trainer_state.json last, after the weights, optimizer and RNG states, so a
    checkpoint whose trainer_state.json parses was fully written; one cut short by a crash lacks it.
    """
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (written last, so the checkpoint was cut short)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable trainer_state.json ({exc})"
    if not any((path / w).is_file() for w in _WEIGHTS) and not any(path.glob("global_step*")):
        return "no model weights"
    return None


def checkpoints_by_step(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every checkpoint-N folder in output_dir, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; newer half-written ones are skipped with a warning."""
    for step, path in reversed(checkpoints_by_step(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping %s: %s", path, problem)
    return None


def write_completion_marker(output_dir: str | Path, marker: str, global_step: int) -> Path:
    """Written after the final model is saved; its presence means the model in output_dir is final."""
    path = Path(output_dir) / marker
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"global_step": global_step, "model_dir": str(Path(output_dir).resolve()),
                               "finished_at": datetime.now(timezone.utc).isoformat()}) + "\n")
    tmp.replace(path)  # atomic: a waiting evaluator never reads half a marker
    return path
