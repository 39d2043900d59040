"""`python -m eval_job` / `r1v-eval`: wait for training, score every checkpoint and the final model,
write the results, push the scores.

Exit codes: 0 done; 1 bad input or nothing to evaluate; 2 bad arguments; 3 the awaited training job
failed; 4 timed out waiting for training; 5 results written but the Pushgateway push failed (rerun
to push them without evaluating again); 6 no space left on device (the results finished so far are
kept; retried); 143 stopped by SIGTERM (the results finished so far are kept, as after a SIGKILL).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import signal
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from eval_job import metrics
from eval_job.checkpoints import FINAL, Target, find_targets, same_weights
from eval_job.data import DataError, read_questions
from eval_job.evaluate import SUMMARY, evaluate_target, write_atomically
from eval_job.wait import WaitConfigError, WaitTimeout, parse_wait_for, wait_for_job, wait_for_marker
from r1v_common.jobs import JobFailed
from r1v_common.processing import IMAGE_BACKENDS
from r1v_common.prompts import EVAL_PROMPTS

logger = logging.getLogger("eval_job")  # the program's own lines read "eval_job: ..."; its modules use __name__

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_TRAINING_FAILED, EXIT_WAIT_TIMEOUT, EXIT_PUSH_FAILED = 0, 1, 2, 3, 4, 5
EXIT_DISK_FULL, EXIT_TERMINATED = 6, 143
INDEX = "scores.json"


def _prompts(values: list[str] | None) -> list[str]:
    names: list[str] = []
    for value in values or ["cot"]:
        for name in filter(None, (v.strip() for v in value.split(","))):
            if name not in EVAL_PROMPTS:
                raise argparse.ArgumentTypeError(f"unknown prompt {name!r}: choose from {', '.join(EVAL_PROMPTS)}")
            if name not in names:
                names.append(name)
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval_job", description="Score a model (and its checkpoints) on "
                                "SuperCLEVR-format counting questions; push the scores to a Pushgateway.")
    p.add_argument("--model", help="final model folder (default: --checkpoints DIR, where the trainer saves it)")
    p.add_argument("--data",
                   help="questions, one {image_path, question, ground_truth} a line (required unless --repush)")
    p.add_argument("--image-root", help="folder relative image paths resolve against (default: the file's folder)")
    p.add_argument("--out", required=True,
                   help="results folder: OUT/<checkpoint>/<prompt>/{results.jsonl,summary.json}")
    p.add_argument("--prompt", action="append", metavar="cot|train|direct",
                   help="prompt(s) to score with; repeatable or comma-separated (default: cot)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-pixels", type=int, help="image processor pixel floor (default: the model's)")
    p.add_argument("--max-pixels", type=int, help="image processor pixel cap (default: the model's)")
    p.add_argument("--image-backend", choices=IMAGE_BACKENDS, default="pil",
                   help="image processor backend: pil gives R1-V's pixels, as the trainer's default does "
                        "(default: pil)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="generation budget, R1-V's 256 by default; an answer cut off by it counts as a parse failure")
    p.add_argument("--checkpoints",
                   help="training output folder: score each complete checkpoint-N, then the final model")
    p.add_argument("--wait-for", metavar="pytorchjob/NAME|trainjob/NAME|marker",
                   help="before evaluating, wait for the PyTorchJob or TrainJob to succeed, "
                        "or for training_complete.json")
    p.add_argument("--namespace", help="the run's namespace: the training job's, and the `namespace` grouping label of "
                   "the pushed scores (default: the pod's, from $POD_NAMESPACE or its service account; outside a "
                   "cluster the kubeconfig's for the job and \"default\" for the label)")
    p.add_argument("--kubeconfig", help="kubeconfig for --wait-for KIND/NAME (default: the pod's service account, "
                   "else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--timeout", type=float, default=86400.0, help="seconds to wait for training (default: 1 day)")
    p.add_argument("--poll-interval", type=float, default=15.0, help="seconds between checks while waiting")
    p.add_argument("--pushgateway", metavar="URL", help="Pushgateway to push r1v_eval_* to (default: no push)")
    p.add_argument("--run", help="`run` grouping label (default: the job name, else the output folder's name)")
    p.add_argument("--benchmark", default="superclevr", help="`benchmark` label of the scores")
    p.add_argument("--push-attempts", type=int, default=5)
    p.add_argument("--push-backoff", type=float, default=2.0, help="seconds before the first retry; doubles after")
    p.add_argument("--repush", action="store_true", help="push every score stored in --out again, as it was "
                   "pushed, without scoring (needs --pushgateway and --run); e.g. after a Pushgateway restart")
    args = p.parse_args(argv)
    if args.repush:
        if not (args.pushgateway and args.run):
            p.error("--repush needs --pushgateway URL and --run NAME")
        args.prompt, args.wait = [], None
        return args
    if not args.data:
        p.error("--data is required (unless --repush)")
    if not (args.model or args.checkpoints):
        p.error("one of --model or --checkpoints is required")
    try:
        args.prompt = _prompts(args.prompt)
        args.wait = parse_wait_for(args.wait_for) if args.wait_for else None
    except (argparse.ArgumentTypeError, ValueError) as e:
        p.error(str(e))
    if args.batch_size < 1 or args.max_new_tokens < 1:
        p.error("--batch-size and --max-new-tokens must be positive")
    return args


def _loader(args: argparse.Namespace, model_dir: Path):
    def load(target: Target):
        from eval_job import generate  # torch and transformers load only when there is work

        return generate.load_generator(target.path, model_dir, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                       image_backend=args.image_backend)

    return load


def _wait(args: argparse.Namespace, model_dir: Path, run: str) -> int:
    kind, name = args.wait
    try:
        if kind == "marker":
            wait_for_marker(Path(args.checkpoints or model_dir), args.timeout, args.poll_interval)
        else:
            wait_for_job(kind, name, args.namespace, args.timeout, args.poll_interval, args.kubeconfig)
    except WaitTimeout as e:
        logger.error("%s", e)
        return EXIT_WAIT_TIMEOUT
    except WaitConfigError as e:
        logger.error("%s", e)
        return EXIT_USAGE
    except RuntimeError as e:  # the API refused (e.g. 403: the service account may not read the job's kind)
        logger.error("cannot read the training job: %s", str(e).splitlines()[0])
        return EXIT_INPUT
    except JobFailed as e:
        logger.error("%s; nothing to evaluate", e)
        if args.pushgateway:
            # Grouped as the run's final model: the run's end result is this failure, and a later
            # successful evaluation of the run replaces it.
            try:
                metrics.push(args.pushgateway, metrics.failure_registry(e.reason),
                             metrics.grouping_key(metrics.pod_namespace(args.namespace), run, FINAL),
                             attempts=args.push_attempts, backoff=args.push_backoff)
            except metrics.PushError as pe:
                logger.error("%s", pe)
        return EXIT_TRAINING_FAILED
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model or args.checkpoints)
    out = Path(args.out)
    run_name = args.run or (args.wait[1] if args.wait and args.wait[1] else None) \
        or Path(args.checkpoints or model_dir).resolve().name
    # The question file is checked before waiting: a typo should fail in seconds, not after training.
    try:
        questions, skipped = read_questions(args.data, args.image_root)
    except DataError as e:
        logger.error("%s", e)
        return EXIT_INPUT
    if skipped:
        logger.warning("%d of %d rows skipped (listed above and in each summary.json)", len(skipped),
                    len(skipped) + len(questions))
    if args.wait and (code := _wait(args, model_dir, run_name)) != EXIT_OK:
        return code

    targets = find_targets(model_dir, args.checkpoints)
    if not targets:
        logger.error("nothing to evaluate: no model (config.json) in %s and no complete checkpoint-N in %s",
                  model_dir, args.checkpoints)
        return EXIT_INPUT
    base_settings = {"data": str(Path(args.data).resolve()), "benchmark": args.benchmark,
                     "max_new_tokens": args.max_new_tokens, "min_pixels": args.min_pixels,
                     "max_pixels": args.max_pixels, "image_backend": args.image_backend}
    load = _loader(args, model_dir)
    namespace = metrics.pod_namespace(args.namespace)
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []
    evaluated = 0
    push_error: metrics.PushError | None = None
    spent, scored = 0.0, 0  # wall time and count of the models evaluated now (not reused from disk)
    checkpoints = [t for t in targets if t.name != FINAL]
    for done, target in enumerate(targets, 1):
        started = time.perf_counter()
        # The final model with a checkpoint's very weights takes that checkpoint's scores (labelled both ways).
        twin = (lambda: same_weights(target, checkpoints)) if target.name == FINAL else None
        summaries, now = evaluate_target(target, questions, skipped, args.prompt, out, benchmark=args.benchmark,
                                         base_settings=base_settings, batch_size=args.batch_size,
                                         max_new_tokens=args.max_new_tokens, load=load, twin=twin)
        evaluated += now
        if now:
            spent, scored = spent + time.perf_counter() - started, scored + 1
            per_model = spent / scored
            logger.info("%s done (%d/%d models, %s per model, loading included); ETA %s", target.name, done,
                     len(targets), timedelta(seconds=round(per_model)),
                     timedelta(seconds=round(per_model * (len(targets) - done))))
        index += [{k: s[k] for k in ("checkpoint", "step", "benchmark", "prompt", "accuracy", "evaluated",
                                     "skipped", "parse_failures", "same_weights_as") if k in s} for s in summaries]
        write_atomically(out / INDEX, json.dumps(index, indent=2) + "\n")
        # Pushed per checkpoint so Grafana fills in while a long evaluation runs. After one failed
        # push (retries included) the gateway is taken as down: the rest is evaluated, not pushed.
        if args.pushgateway and push_error is None:
            try:
                metrics.push(args.pushgateway, metrics.scores_registry(summaries, target.step),
                             metrics.grouping_key(namespace, run_name, target.name),
                             attempts=args.push_attempts, backoff=args.push_backoff)
            except metrics.PushError as e:
                push_error = e
    logger.info("evaluated %d (checkpoint, prompt) pairs, reused %d from %s", evaluated,
             len(index) - evaluated, out)
    for row in index:
        print(f"{row['checkpoint']:>16} step {row['step']:>6} {row['benchmark']}/{row['prompt']:<6} "
              f"accuracy {100 * row['accuracy']:5.1f}%  parse failures {row['parse_failures']}")
    if push_error:
        logger.error("%s. The results are on disk in %s; rerun the same command to push them without evaluating "
                  "again.", push_error, out)
        return EXIT_PUSH_FAILED
    return EXIT_OK


def repush(args: argparse.Namespace) -> int:
    """Every (checkpoint, prompt) of OUT/scores.json pushed again from its summary.json, one group per
    checkpoint, exactly as the evaluation pushed it (same values, labels and timestamps)."""
    out = Path(args.out)
    if not (out / INDEX).exists():  # not evaluated yet (a scheduled re-push before the evaluation): nothing lost
        logger.info("nothing to re-push: no %s yet", out / INDEX)
        return EXIT_OK
    try:
        index = json.loads((out / INDEX).read_text())
        groups: dict[str, list[dict]] = {}
        for row in index:
            groups.setdefault(row["checkpoint"], []).append(
                json.loads((out / row["checkpoint"] / row["prompt"] / SUMMARY).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.error("nothing to re-push from %s: %s", out, e)
        return EXIT_INPUT
    namespace = metrics.pod_namespace(args.namespace)
    for checkpoint, summaries in groups.items():
        try:
            metrics.push(args.pushgateway, metrics.scores_registry(summaries, summaries[0]["step"]),
                         metrics.grouping_key(namespace, args.run, checkpoint),
                         attempts=args.push_attempts, backoff=args.push_backoff)
        except metrics.PushError as e:
            logger.error("%s", e)
            return EXIT_PUSH_FAILED
    logger.info("re-pushed %d group(s), %d score(s) from %s", len(groups), len(index), out)
    return EXIT_OK


class Terminated(BaseException):
    """SIGTERM: raised wherever the evaluator is (waiting, generating, writing). Every file is
    written by atomic rename, so what was finished stays and a half-written one never appears."""


def _terminate(signum, frame):
    raise Terminated


@contextmanager
def sigterm_raises():
    """SIGTERM raises Terminated while active: as PID 1 of a container Python would ignore it and wait
    out the pod's grace period."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding program's worker): the signal stays its own
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        with sigterm_raises():
            return repush(args) if args.repush else run(args)
    except Terminated:
        logger.error("stopped by SIGTERM: the results finished so far stay in %s; a rerun evaluates only what is "
                  "missing. exit %d", args.out, EXIT_TERMINATED)
        return EXIT_TERMINATED
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        logger.error("no space left on device (ENOSPC) writing %s: the results finished so far stay in %s; free space "
                  "and rerun (exit %d is retried)", e.filename or args.out, args.out, EXIT_DISK_FULL)
        return EXIT_DISK_FULL


if __name__ == "__main__":
    sys.exit(main())
