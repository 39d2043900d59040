"""Training data in the CLEVR-70k schema (`image`, `problem`, `solution`), from wherever it lives.

`dataset_name` may be a Hub id (leonardPKU/clevr_cogen_a_train), a `datasets.save_to_disk` folder,
parquet files (a file, a glob, or a folder of them) or a jsonl whose `image` holds paths (relative
ones resolve against `image_root`, else the jsonl's folder). Rows TRL could not train on are dropped
up front, counted and logged with `FILE:LINE: reason` (`row N` for other forms): a jsonl line that
is not JSON, a field of the wrong type (an `image` that is a number or a list), an image that
`r1v_common.processing.image_problem` refuses (does not decode, not a regular file, an aspect ratio
Qwen2-VL refuses, too many pixels, a colour mode such as CMYK, too slow to read), a solution
without a number. One bad row must not stop a 70k-row run half way; an empty result is an error
that says why. A row that fails anyway during training is replaced there (`R1VGRPOTrainer`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import datasets

from r1v_common.jsonl import jsonl_lines
from r1v_common.processing import image_problem
from r1v_common.prompts import TRAIN_PROMPT

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image", "problem", "solution")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SHOWN_REASONS = 5
_LOGGED_REASONS = 100  # rows named one per log line; the rest are counted


class DataError(ValueError):
    """The training data cannot be used; the message names the source and the reason."""


def _field_problem(row: dict) -> str | None:
    """A schema column holding something else than text (or null): `"image": 42` is a number, not a path."""
    for column in REQUIRED_COLUMNS:
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            kind = "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else \
                "a boolean" if isinstance(value, bool) else \
                "a number" if isinstance(value, (int, float)) else "not text"
            return f"{column} is {kind} ({json.dumps(value)[:40]}), not {'a path' if column == 'image' else 'text'}"
    return None


def _json_lines(path: Path) -> tuple[list[dict], list[int], list[str]]:
    """The rows of a jsonl file, the line each came from, and why each other line is not one
    (`FILE:LINE: ...`, 1-based)."""
    rows, lines, bad = [], [], []
    for number, row, problem in jsonl_lines(path):
        problem = problem or _field_problem(row)
        if problem:
            bad.append(f"{path}:{number}: {problem}")
        else:
            rows.append(row)
            lines.append(number)
    return rows, lines, bad


def _load_jsonl(path: Path) -> tuple[datasets.Dataset, list[int], list[str]]:
    rows, lines, bad = _json_lines(path)
    if not rows:
        why = f"first reasons: {'; '.join(bad[:_SHOWN_REASONS])}" if bad else "the file has no rows"
        raise DataError(f"dataset_name {path}: no usable rows out of {len(bad)}; {why}")
    if not bad:
        # datasets' own reader: its result is cached by file fingerprint, so the other ranks of a
        # multi-GPU job reuse rank 0's checks (main_process_first).
        return datasets.load_dataset("json", data_files=str(path), split="train"), lines, []
    # datasets' reader stops at the first malformed line (and at a column whose type changes); build
    # from the good rows instead (not cached, so each rank checks the images again: fix the file to
    # get the cache back).
    return datasets.Dataset.from_list(rows), lines, bad


def _load_raw(source: str, split: str, config: str | None, image_root: str | None
              ) -> tuple[datasets.Dataset, list[int] | None, list[str]]:
    """The raw rows of `source`, the file line of each (jsonl only, else None), and the reasons for
    lines that are not rows."""
    path = Path(source)
    if path.suffix == ".jsonl" or path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"dataset_name {source}: no such file")
        if path.suffix == ".jsonl":
            ds, lines, bad_lines = _load_jsonl(path)
        else:  # a .json file may hold one JSON array: datasets' reader takes both forms
            ds, lines, bad_lines = datasets.load_dataset("json", data_files=str(path), split="train"), None, []
        root = Path(image_root) if image_root else path.parent
        if "image" in ds.column_names:
            # Relative paths resolve against image_root or the jsonl's folder, like R1-V's eval files.
            ds = ds.map(lambda row: {"image": row["image"] if not isinstance(row["image"], str)
                                     else str(root / row["image"])})
        return ds, lines, bad_lines
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return (loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded), None, []
    if path.suffix == ".parquet" or "*" in source or (path.is_dir() and any(path.rglob("*.parquet"))):
        files = str(path / "**" / "*.parquet") if path.is_dir() else source
        return datasets.load_dataset("parquet", data_files=files, split="train"), None, []
    if path.exists():
        raise DataError(f"dataset_name {source}: not a jsonl file, a save_to_disk folder or parquet files")
    # Anything else is a Hub id (or a local dataset script folder), loaded the usual way.
    return datasets.load_dataset(source, config, split=split), None, []


def _solution_problem(solution) -> str | None:
    if not isinstance(solution, str) or not solution.strip():
        return "missing solution"
    if not _NUMBER.search(solution):
        return f"non-numeric solution {solution!r}"
    return None


def load_train_dataset(source: str, split: str = "train", config: str | None = None,
                       image_root: str | None = None, max_samples: int | None = None,
                       prompt_template: str = TRAIN_PROMPT) -> datasets.Dataset:
    """The usable rows of `source`, with a conversational `prompt` column and decoded `image`s."""
    ds, lines, bad_lines = _load_raw(source, split, config, image_root)
    if len(ds) == 0:
        raise DataError(f"dataset_name {source}: the data set has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset_name {source}: missing columns {missing} (has {ds.column_names}); "
                        f"expected the CLEVR-70k schema {list(REQUIRED_COLUMNS)}")
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
        lines = lines[:len(ds)] if lines is not None else None
    # The Image feature's raw form, {"bytes", "path"}: image_problem opens and decodes it itself.
    if isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))

    # A map, not a loop: datasets caches its result by fingerprint, so in a multi-GPU job rank 0
    # checks the files once (main_process_first) and the other ranks read its cache.
    # image_problem decodes every image whole (about 2 ms for a 480x320 PNG): minutes for 70k rows, once.
    checked = ds.map(lambda row: {"_problem": _solution_problem(row["solution"]) or image_problem(row["image"])},
                     desc="checking rows")
    where = (lambda i: f"{source}:{lines[i]}") if lines is not None else (lambda i: f"row {i}")
    reasons = bad_lines + [f"{where(i)}: {p}" for i, p in enumerate(checked["_problem"]) if p]
    total = len(ds) + len(bad_lines)
    if reasons:
        logger.warning("dataset %s: dropped %d of %d rows; first reasons: %s", source, len(reasons), total,
                       "; ".join(reasons[:_SHOWN_REASONS]))
        for reason in reasons[:_LOGGED_REASONS]:
            logger.warning("dropped %s", reason)
        if len(reasons) > _LOGGED_REASONS:
            logger.warning("dropped %d more rows (not listed)", len(reasons) - _LOGGED_REASONS)
    if len(reasons) == total:
        raise DataError(f"dataset_name {source}: no usable rows out of {total}"
                        + (f"; first reasons: {'; '.join(reasons[:_SHOWN_REASONS])}" if reasons else ""))
    ds = checked.filter(lambda problem: problem is None, input_columns="_problem").remove_columns("_problem")
    ds = ds.cast_column("image", datasets.Image(decode=True))
    # TRL inserts the image placeholder before the text of the first user turn from the `image` column.
    return ds.map(lambda row: {"prompt": [{"role": "user",
                                           "content": prompt_template.format(Question=row["problem"])}]})
