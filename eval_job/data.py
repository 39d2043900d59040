"""Reading R1-V's evaluation format: one JSON object a line,
`{"image_path": "./images/x.png", "question": "How many ...?", "ground_truth": 4}`.

A bad row (text that is not UTF-8, malformed JSON, a missing field, a non-integer ground truth, an
`image_path` that is not text, an image that `r1v_common.processing.image_problem` refuses: missing, not a
regular file, not decodable, an aspect ratio Qwen2-VL refuses, too many pixels, a colour mode such as
CMYK, too slow to read) is skipped and reported as `FILE:LINE: reason`, so one broken image cannot sink
a 200-question run; the skipped rows are named in every summary. Zero usable questions is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from r1v_common.jsonl import jsonl_lines
from r1v_common.processing import image_problem

logger = logging.getLogger(__name__)


class DataError(Exception):
    """The question file cannot be evaluated at all."""


@dataclass(frozen=True)
class Question:
    line: int
    image: str  # as written in the file, for the results
    image_path: Path  # resolved
    question: str
    ground_truth: int
    file: str = ""  # the question file, as given


@dataclass(frozen=True)
class Skip:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def _ground_truth(value) -> int:
    # bool is an int subclass: `true` is not a count.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"ground_truth must be an integer, got {value!r}")


def _check_image(path: Path) -> None:
    # Decodes the pixels: a truncated file fails here, not mid-batch; a FIFO is never opened.
    if problem := image_problem(path):
        raise ValueError(problem if str(path) in problem else f"{problem}: {path}")


def _parse(row: dict, root: Path, line: int, file: str) -> Question:
    missing = [k for k in ("image_path", "question", "ground_truth") if k not in row]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise ValueError("question must be a non-empty string")
    truth = _ground_truth(row["ground_truth"])
    image = row["image_path"]
    if not isinstance(image, str) or not image:
        kind = "a list" if isinstance(image, list) else "an object" if isinstance(image, dict) else \
            "a number" if isinstance(image, (int, float)) and not isinstance(image, bool) else repr(image)
        raise ValueError(f"image_path must be a path, got {kind}" + (f" ({image})" if kind.startswith("a") else ""))
    image_path = Path(image) if Path(image).is_absolute() else root / image
    _check_image(image_path)
    return Question(line=line, image=image, image_path=image_path, question=row["question"], ground_truth=truth,
                    file=file)


def read_questions(path: str | Path, image_root: str | Path | None = None) -> tuple[list[Question], list[Skip]]:
    """Usable questions and skipped rows of `path`. Relative image paths resolve against
    `image_root`, else the file's folder. Raises DataError when nothing is usable."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        lines = list(jsonl_lines(path))
    except OSError as e:
        raise DataError(f"cannot read the question file {path}: {e.strerror or e}") from e
    questions: list[Question] = []
    skipped: list[Skip] = []
    for number, row, problem in lines:
        try:
            if row is None:
                raise ValueError(problem)
            questions.append(_parse(row, root, number, str(path)))
        except ValueError as e:
            skip = Skip(str(path), number, str(e))
            logger.warning("skipped %s", skip)
            skipped.append(skip)
    if not questions:
        why = (f"all {len(skipped)} rows were skipped (first: {skipped[0]})" if skipped
               else "the file has no rows")
        raise DataError(f"no usable questions in {path}: {why}")
    return questions, skipped
