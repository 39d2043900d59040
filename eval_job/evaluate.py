"""Scoring one model on the questions with each prompt, with the results kept on disk.

Layout: OUT/<checkpoint>/<prompt>/results.jsonl (a row per question) and summary.json, where
<checkpoint> is `checkpoint-N` or `final`. summary.json is written last, so its presence means that
(checkpoint, prompt) is done: a restarted evaluation reuses it instead of generating again, unless
the settings that shape the score (data, prompt text, pixels, max_new_tokens, the model: its path,
step and weights files' sizes and mtimes) changed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from eval_job.checkpoints import Target, model_identity
from eval_job.data import Question, Skip
from eval_job.scoring import RULES, score
from r1v_common.prompts import EVAL_PROMPTS

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
# mkstemp creates 0600 files; scores on a shared volume are for others to read too, as a plain
# open() under the process umask would make them.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: Path, text: str) -> None:
    # A crash mid-write must not leave a truncated file that a rerun would trust; the temp name is
    # unique, so two evaluators writing the same file cannot rename each other's temp away.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.ENOSPC and not e.filename:  # a failed write() names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def claim(directory: Path):
    """Exclusive use of one (checkpoint, prompt) folder: a second evaluator on the same --out waits
    here, then finds the first one's summary.json and reuses it instead of evaluating again."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_done(directory: Path, settings: dict) -> dict | None:
    """The summary of a finished evaluation with the same settings, else None."""
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if summary.get("settings") != settings or not (directory / RESULTS).is_file():
        logger.info("%s: results missing or made with other settings, evaluating again", directory)
        return None
    return summary


def _generate(generator, batch: list[Question], template: str, max_new_tokens: int
              ) -> tuple[list[Question], list[str], list[Skip]]:
    """(questions answered, their outputs, rows skipped). A batch that fails is looked at row by row: rows
    whose image the processor fails on alone are skipped (named like bad rows) and the others answered;
    when no row is the cause (out of memory, a bug), the error stands."""
    try:
        return batch, generator.generate([q.image_path for q in batch], [q.question for q in batch], template,
                                         max_new_tokens), []
    except Exception:
        check = getattr(generator, "image_problem", None)
        problems = {id(q): p for q in batch if check is not None and (p := check(q.image_path))}
        if not problems:
            raise
    skips = [Skip(q.file, q.line, f"failed while scoring: {problems[id(q)]}") for q in batch if id(q) in problems]
    for skip in skips:
        logger.warning("skipped %s", skip)
    keep = [q for q in batch if id(q) not in problems]
    if not keep:
        return [], [], skips
    answered, outputs, more = _generate(generator, keep, template, max_new_tokens)
    return answered, outputs, skips + more


def evaluate_prompt(generator, questions: list[Question], prompt: str, batch_size: int, max_new_tokens: int,
                    label: str = "", failed: list[Skip] | None = None) -> tuple[list[dict], float]:
    """Result rows for every question, and the seconds it took. Rows the processor fails on are left
    out of the results and appended to `failed`."""
    template, extract = EVAL_PROMPTS[prompt], RULES[prompt]
    rows: list[dict] = []
    failed = [] if failed is None else failed
    start = time.perf_counter()
    for first in range(0, len(questions), batch_size):
        batch, outputs, skips = _generate(generator, questions[first:first + batch_size], template, max_new_tokens)
        failed += skips
        for q, output in zip(batch, outputs, strict=True):
            answer = extract(output)
            rows.append({"line": q.line, "image": q.image, "question": q.question, "ground_truth": q.ground_truth,
                         "model_output": output, "extracted_answer": answer, "correct": answer == q.ground_truth})
        done = len(rows) + len(failed)
        rate = done / max(time.perf_counter() - start, 1e-9)
        eta = timedelta(seconds=round((len(questions) - done) / rate))
        logger.info("%s %s: %d/%d questions | %.2f questions/s | ETA %s", label, prompt, done, len(questions),
                 rate, eta)
    return rows, time.perf_counter() - start


def summarize(rows: list[dict], duration: float, target: Target, prompt: str, skipped: list[Skip],
              benchmark: str, settings: dict) -> dict:
    s = score(((r["model_output"], r["ground_truth"]) for r in rows), RULES[prompt])
    now = time.time()
    return {
        "checkpoint": target.name,
        "step": target.step,
        "model": str(target.path),
        "benchmark": benchmark,
        "prompt": prompt,
        "answer_rule": "first number" if prompt == "direct" else "<answer>N</answer>",
        "accuracy": s.accuracy,
        "correct": s.correct,
        "evaluated": s.total,
        "skipped": len(skipped),
        "parse_failures": s.parse_failures,
        "duration_seconds": duration,
        "samples_per_second": s.total / duration if duration > 0 else 0.0,
        "finished_at": datetime.fromtimestamp(now, timezone.utc).isoformat(),
        "finished_at_unix": now,
        "skipped_rows": [str(skip) for skip in skipped],
        "settings": settings,
    }


def _scoring_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in ("model", "model_step", "model_files")}


def reuse_twin(twin: Target, target: Target, prompt: str, out: Path, settings: dict) -> dict | None:
    """`target`'s summary made from `twin`'s (same weights, scored in this OUT), written to
    OUT/<target>/<prompt>/ with `same_weights_as`; None if the twin has no finished summary."""
    source = out / twin.name / prompt
    try:
        summary = json.loads((source / SUMMARY).read_text())
        rows = (source / RESULTS).read_text()
    except (OSError, json.JSONDecodeError):
        return None
    if _scoring_settings(summary.get("settings") or {}) != _scoring_settings(settings):
        return None  # scored with other data, prompt, pixels or budget: not this evaluation's score
    summary = {**summary, "checkpoint": target.name, "step": target.step, "model": str(target.path),
               "settings": settings, "same_weights_as": twin.name}
    directory = out / target.name / prompt
    write_atomically(directory / RESULTS, rows)
    write_atomically(directory / SUMMARY, json.dumps(summary, indent=2) + "\n")
    logger.info("%s %s: same weights as %s (sha256), its score reused: accuracy %.1f%% -> %s", target.name, prompt,
             twin.name, 100 * summary["accuracy"], directory)
    return summary


def evaluate_target(target: Target, questions: list[Question], skipped: list[Skip], prompts: list[str], out: Path,
                    *, benchmark: str, base_settings: dict, batch_size: int, max_new_tokens: int,
                    load: Callable[[Target], object],
                    twin: Callable[[], Target | None] | None = None) -> tuple[list[dict], int]:
    """Summaries of `target` for every prompt, and how many prompts were evaluated now (the others
    were reused from disk). The model is loaded only if something is left to evaluate. `twin`, asked
    only then, names an already scored target with the same weights, whose scores are reused."""
    summaries = []
    evaluated_now = 0
    generator = None
    identity = {"model": str(target.path), "model_step": target.step, "model_files": model_identity(target.path)}
    same = None
    for prompt in prompts:
        directory = out / target.name / prompt
        settings = {**base_settings, **identity, "prompt_template": EVAL_PROMPTS[prompt]}
        with claim(directory):
            summary = load_done(directory, settings)
            if summary is None and twin is not None:
                if same is None:
                    same = twin() or False
                if same:
                    summary = reuse_twin(same, target, prompt, out, settings)
            if summary is None:
                if generator is None:
                    generator = load(target)
                failed: list[Skip] = []
                rows, duration = evaluate_prompt(generator, questions, prompt, batch_size, max_new_tokens,
                                                 target.name, failed)
                summary = summarize(rows, duration, target, prompt, skipped + failed, benchmark, settings)
                write_atomically(directory / RESULTS, "".join(json.dumps(r) + "\n" for r in rows))
                write_atomically(directory / SUMMARY, json.dumps(summary, indent=2) + "\n")
                evaluated_now += 1
                logger.info("%s %s: accuracy %.1f%% (%d parse failures) -> %s", target.name, prompt,
                         100 * summary["accuracy"], summary["parse_failures"], directory)
            else:
                logger.info("%s %s: already evaluated (%s), reusing", target.name, prompt, directory / SUMMARY)
        summaries.append(summary)
    return summaries, evaluated_now
