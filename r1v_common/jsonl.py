"""The tolerant reader of jsonl files someone else wrote (training rows, evaluation questions):
one bad line is named and skipped by the caller, never the whole file."""

from __future__ import annotations

import json
from pathlib import Path


def jsonl_lines(path: str | Path):
    """Each non-blank line of a jsonl file someone else wrote, as (line number, JSON object or None,
    why not one or None). Read as bytes and decoded line by line: one non-UTF-8 byte spoils its
    line, not the file. Raises OSError when the file cannot be read."""
    lines = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")  # a leading BOM is not data
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline) are not rows
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield number, None, f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
        except json.JSONDecodeError as exc:
            yield number, None, f"malformed JSON ({exc.msg} at column {exc.colno})"
        else:
            yield (number, row, None) if isinstance(row, dict) else (number, None, "not a JSON object")
