"""The write side of a run's output folder: checkpoint rotation, durable writes, the completion
marker and finishing a run from its last checkpoint. What these files mean when read (complete
checkpoints, the resume point, the marker's check) is r1v_common.checkpoints, shared with the evaluator."""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from r1v_common.checkpoints import (_MODEL_FILES, _WEIGHTS, COMPLETION_MARKER, SOURCE_RECORD, UNKNOWN_REVISION,
                                    _digest, checkpoint_problem, checkpoint_step, checkpoints_by_step,
                                    final_weights, latest_complete_checkpoint, marker_problem, read_marker,
                                    safetensors_problem, source_revision, source_revisions)

logger = logging.getLogger(__name__)

__all__ = ["COMPLETION_MARKER", "SOURCE_RECORD", "UNKNOWN_REVISION", "checkpoint_problem", "checkpoint_step",
           "checkpoints_by_step", "final_weights", "latest_complete_checkpoint", "marker_problem", "read_marker",
           "safetensors_problem", "source_revision", "source_revisions", "rotate_checkpoints", "fsync_tree",
           "write_completion_marker", "remove_completion_marker", "finish_from_checkpoint"]


def rotate_checkpoints(output_dir: str | Path, save_total_limit: int, training_state: bool = True,
                       best_model_checkpoint: str | None = None) -> list[Path]:
    """Keeps the newest `save_total_limit` complete checkpoints (and the best model's); deletes the
    older ones and any incomplete one below the oldest kept. Returns what it deleted.

    transformers' own rotation counts every checkpoint-N folder, so a half-written folder of a higher
    step (left by a run killed while saving, skipped on resume) would be kept as the newest and the
    whole checkpoint just saved deleted. Incomplete folders above the kept ones stay: the run
    overwrites each when it reaches its step."""
    found = checkpoints_by_step(output_dir)
    complete = [(step, path) for step, path in found if checkpoint_problem(path, training_state) is None]
    kept = {path for _, path in complete[-save_total_limit:]}
    if best_model_checkpoint:
        kept.add(Path(best_model_checkpoint))
    if not kept:
        return []
    oldest_kept = min(step for step, path in found if path in kept)
    gone = [path for step, path in found if path not in kept and step < oldest_kept]
    for path in gone:
        logger.info("deleting %s (save_total_limit %d)", path, save_total_limit)
        shutil.rmtree(path, ignore_errors=True)
    return gone


# --- durability --------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path, recurse: bool = True) -> None:
    """fsync every file under `path` (only its own files unless `recurse`), then the folders, then
    `path`'s parent (which names it)."""
    path = Path(path)
    if not path.is_dir():
        return
    for root, folders, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))
        if not recurse:
            folders.clear()
    _fsync_dir(path.parent)


def _write_durably(path: Path, text: str) -> None:
    """Atomic and durable: a reader sees the old file or the whole new one, also after a power cut."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


# --- the completion marker ---------------------------------------------------------------------

def write_completion_marker(output_dir: str | Path, marker: str, global_step: int,
                            source: dict[str, str] | None = None) -> Path:
    """Written after the final model is saved; its presence means the model in output_dir is final.

    The model's files are fsynced first, and the marker records the step and each weights file's
    size and sha256, which `marker_problem` (the evaluator's `--wait-for marker`) checks, and
    `source` (source_revisions: the model and data revisions the run trained on).
    """
    output_dir = Path(output_dir)
    files = final_weights(output_dir)
    if not files:
        raise FileNotFoundError(f"no final model weights (model.safetensors) in {output_dir}")
    for file in files:
        if file.suffix == ".safetensors" and (problem := safetensors_problem(file)):
            raise OSError(f"final model in {output_dir} is not whole: {problem}")
    fsync_tree(output_dir, recurse=False)  # the final model's files; each checkpoint was fsynced when saved
    record = {"global_step": global_step, "model_dir": str(output_dir.resolve()),
              "finished_at": datetime.now(timezone.utc).isoformat(),
              "files": {f.name: {"size": f.stat().st_size, "sha256": _digest(f)} for f in files}}
    if source is not None:
        record["source"] = source
    path = output_dir / marker
    _write_durably(path, json.dumps(record, indent=1) + "\n")
    return path


def remove_completion_marker(output_dir: str | Path, marker: str) -> bool:
    """Before training starts: while a run trains, output_dir holds no marker."""
    path = Path(output_dir) / marker
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    return True


def finish_from_checkpoint(checkpoint: Path, output_dir: str | Path) -> None:
    """Makes `checkpoint` (at the run's last step) the final model: what `save_model` writes there
    after the last step is the same weights and files, so a restart killed during the final save
    completes it without loading a model or training."""
    output_dir = Path(output_dir)
    for old in final_weights(output_dir):
        old.unlink()  # a half-written final model of another shard count must not linger
    for file in sorted(checkpoint.iterdir()):
        if file.is_file() and (_WEIGHTS.match(file.name) or _MODEL_FILES.match(file.name)):
            tmp = output_dir / f".{file.name}.tmp"
            shutil.copyfile(file, tmp)
            tmp.replace(output_dir / file.name)
