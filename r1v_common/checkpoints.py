"""The read side of a run's output folder: which checkpoints are complete, where a run resumes
from, the final weights, the completion marker and the revisions a run trained on. Standard library
only: the trainer (which writes these files, r1v_job.checkpoints) and the evaluator read them by the
same rules."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

# The trainer writes it after the final model; the evaluator's `--wait-for marker` waits on it.
COMPLETION_MARKER = "training_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What `save_model` writes besides the weights; copied with them when a run is finished from its
# last checkpoint.
_MODEL_FILES = re.compile(r"^(config\.json|generation_config\.json|chat_template\.(jinja|json)|"
                          r"(tokenizer|tokenizer_config|special_tokens_map|processor_config|preprocessor_config|"
                          r"video_preprocessor_config|vocab|merges|added_tokens)\.(json|txt|model))$")
_WEIGHTS = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$|^model\.safetensors\.index\.json$")


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, or None. Reads the header only: a file cut short
    is shorter than the offsets its header promises."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{path.name}: truncated ({size} bytes, header says {length} bytes of header alone)"
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name}: not a safetensors file ({type(exc).__name__}: {exc})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size < 8 + length + end:
        return f"{path.name}: truncated ({size} bytes, its header needs {8 + length + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive whose directory is at the end: a truncated file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        return f"{path.name}: unreadable ({exc})"
    return None


def _weights_problem(path: Path) -> str | None:
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        return safetensors_problem(path / "model.safetensors")
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{index.name}: unreadable ({exc})"
        for shard in shards:
            if not (path / shard).is_file():
                return f"{shard}: missing (listed in {index.name})"
            if problem := safetensors_problem(path / shard):
                return problem
        return None
    if any(path.glob("global_step*")):  # DeepSpeed without consolidated weights: its own module states
        return None
    return "no model weights (model.safetensors)"


def _training_state_problem(path: Path) -> str | None:
    """The optimizer, scheduler and RNG states resume loads, in transformers' or DeepSpeed's layout."""
    deepspeed = sorted(path.glob("global_step*"))
    if deepspeed:
        files = sorted(deepspeed[-1].glob("*.pt"))
        if not any("optim_states" in f.name for f in files):
            return f"{deepspeed[-1].name}: no DeepSpeed optimizer states"
    else:
        if not (path / "optimizer.pt").is_file():
            return "no optimizer.pt"
        files = [path / "optimizer.pt"]
    if not (path / "scheduler.pt").is_file():
        return "no scheduler.pt"
    files += [path / "scheduler.pt", *sorted(path.glob("rng_state*.pth"))]
    for file in files:
        if problem := _torch_file_problem(file):
            return problem
    return None


def checkpoint_problem(path: Path, training_state: bool = True) -> str | None:
    """Why `path` cannot be used, or None when it is complete.

    Complete means every file resume loads is present and parses: trainer_state.json (written last
    by transformers, so a checkpoint cut short lacks it), the weights (the safetensors header and
    the length it promises) and, with `training_state`, the optimizer, scheduler and RNG states (the
    evaluator needs only the weights; a `save_only_model` run has no optimizer to resume).
    """
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (written last, so the checkpoint was cut short)"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        return f"trainer_state.json: unreadable ({exc})"
    return _weights_problem(path) or (_training_state_problem(path) if training_state else None)


def checkpoints_by_step(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every checkpoint-N folder in output_dir, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | Path, training_state: bool = True) -> Path | None:
    """The newest complete checkpoint; newer incomplete or corrupt ones are skipped with a warning
    naming the file and the reason."""
    for step, path in reversed(checkpoints_by_step(output_dir)):
        problem = checkpoint_problem(path, training_state)
        if problem is None:
            return path
        logger.warning("skipping %s: %s; resuming from an older checkpoint", path, problem)
    return None


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / "trainer_state.json").read_text())["global_step"])


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def final_weights(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir() if p.is_file() and _WEIGHTS.match(p.name))


# --- what a run trained on ----------------------------------------------------------------------

# Data preparation (charts/r1v/files/data_prep.py) writes this file into each model and data set
# folder it downloads: {"repo_id", "repo_type", "revision" (the Hub commit it fetched)}.
SOURCE_RECORD = ".r1v-source.json"
UNKNOWN_REVISION = "unknown"


def source_revision(path: str | Path, requested: str | None = None) -> str:
    """The Hub commit a model or data set path was fetched at: the record data preparation left in
    the folder (a file's folder, for a jsonl or parquet file); for a Hub id (no such local path) the
    revision the recipe asks the Hub for (`requested`); else "unknown" (filled by hand, or built offline)."""
    path = Path(path)
    if not path.exists() and "*" not in path.name:
        return requested or UNKNOWN_REVISION
    for folder in (path,) if path.is_dir() else (path.parent,):
        try:
            revision = json.loads((folder / SOURCE_RECORD).read_text()).get("revision")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(revision, str) and revision:
            return revision
    return UNKNOWN_REVISION


def source_revisions(model: str | Path, dataset: str | Path, model_revision: str | None = None) -> dict[str, str]:
    """The model and data set a run trains on, with their revisions: the completion marker's `source`
    and the labels of r1v_train_source_info."""
    return {"model": str(model), "model_revision": source_revision(model, model_revision),
            "dataset": str(dataset), "dataset_revision": source_revision(dataset)}


# --- the completion marker (written by r1v_job.checkpoints.write_completion_marker) ------------

def read_marker(output_dir: str | Path, marker: str = COMPLETION_MARKER) -> dict | None:
    try:
        record = json.loads((Path(output_dir) / marker).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def marker_problem(output_dir: str | Path, record: dict, digests: bool = True) -> str | None:
    """Why the marker `record` does not describe the files in output_dir, or None when it does."""
    files = record.get("files")
    if not isinstance(record.get("global_step"), int) or not isinstance(files, dict) or not files:
        return "it records no global_step or no files (written by an older version?)"
    for name, expected in files.items():
        path = Path(output_dir) / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("size"):
            return f"{name} has {size} bytes, the marker says {expected.get('size')}"
        if digests and _digest(path) != expected.get("sha256"):
            return f"{name} has another sha256 than the marker records"
    return None
