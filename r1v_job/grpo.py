"""GRPO on a vision-language model with R1-V's recipe, on TRL's GRPOTrainer.

    python -m r1v_job --config recipes/r1v_qwen2vl_2b_clevr.yaml [--field value ...]
    torchrun --nproc_per_node 8 -m r1v_job --config ...      (in a PyTorchJob: torchrun reads PET_*)

One YAML holds GRPOConfig, ModelConfig and R1VScriptArguments fields; the command line overrides any.
Exit codes (docs/operations.md): 0 trained, or already finished; 2 bad input (one line on stderr, the
traceback with R1V_DEBUG=1 or --debug; retrying cannot help); 143 preempted (SIGTERM: the step in
flight was checkpointed); 1 a full disk (one line naming the path; retried) or anything else: a
crash worth a retry.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import yaml

import torch
import transformers
from transformers import PrinterCallback
from trl import GRPOConfig, ModelConfig, TrlParser

from . import checkpoints as ckpt
from . import restarts
from .config import R1VScriptArguments
from .data import load_train_dataset
from .lease import Lease
from .metrics import finish_training_metrics, training_callbacks
from .preflight import UsageError, check_chart_keys, check_recipe_types, run_checks
from r1v_common.processing import load_processor
from .rewards import get_reward_funcs
from .preemption import Preempted, StopRequest
from .restarts import StopAtStepCallback, is_main_process
from .trainer import R1VGRPOTrainer

logger = logging.getLogger("r1v_job")  # the program's own lines read "r1v_job: ..."; its modules use __name__


def choose_attn_implementation(requested: str | None) -> str:
    """flash_attention_2 where it is installed and a GPU runs, sdpa otherwise; an explicit choice wins."""
    if requested:
        choice, why = requested, "set in the recipe"
    elif torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        choice, why = "flash_attention_2", "flash-attn is installed"
    else:
        choice, why = "sdpa", "flash-attn is not installed" if torch.cuda.is_available() else "no GPU"
    logger.info("attn_implementation=%s (%s)", choice, why)
    return choice


def bootstrap_offline(script_args: R1VScriptArguments, model_args: ModelConfig) -> None:
    """Build the tiny model and synthetic scenes a laptop recipe points at, when they are missing,
    and SuperCLEVR-like held-out questions beside them (DATA_FOLDER/superclevr/questions.jsonl) for
    the evaluator."""
    from .synthetic import write_clevr_train, write_superclevr_eval
    from .tiny import save_tiny_model

    model_dir = Path(model_args.model_name_or_path)
    if not (model_dir / "config.json").exists():
        logger.info("offline_bootstrap: writing a tiny Qwen2-VL to %s", model_dir)
        save_tiny_model(model_dir)
    data = Path(script_args.dataset_name)
    if not data.exists():
        if data.suffix != ".jsonl":
            raise UsageError(f"offline_bootstrap: dataset_name {data} must end in .jsonl to be drawn synthetically")
        logger.info("offline_bootstrap: drawing %d synthetic scenes to %s", script_args.bootstrap_scenes, data)
        written = write_clevr_train(data.parent, script_args.bootstrap_scenes)
        if written != data:
            written.rename(data)
    questions = data.parent / "superclevr" / "questions.jsonl"
    if not questions.exists():
        n = max(script_args.bootstrap_scenes // 4, 1)
        logger.info("offline_bootstrap: drawing %d held-out questions to %s", n, questions)
        write_superclevr_eval(questions.parent, n)


def load_checked_dataset(script_args: R1VScriptArguments):
    return load_train_dataset(script_args.dataset_name, split=script_args.dataset_train_split,
                              config=script_args.dataset_config, image_root=script_args.image_root,
                              max_samples=script_args.max_train_samples)


def build_trainer(script_args: R1VScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
                  callbacks: list | None = None) -> R1VGRPOTrainer:
    # Bad input ends here, in seconds, before anything is written or loaded.
    # run() has checked them already (it may write before it builds); the checks are cheap and
    # idempotent, and callers that build a trainer themselves (bench, tests) get them too.
    run_checks(script_args, training_args, model_args)
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    reward_names = [fn.__name__ for fn in reward_funcs]  # TRL logs rewards/<__name__>/mean
    if script_args.offline_bootstrap:
        # Rank 0 builds; the others wait for it, then find the files there and build nothing.
        with training_args.main_process_first(local=False, desc="offline bootstrap"):
            bootstrap_offline(script_args, model_args)

    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "dtype": model_args.dtype or "auto",
        "attn_implementation": choose_attn_implementation(model_args.attn_implementation),
        "revision": model_args.model_revision,
    }
    with training_args.main_process_first(desc="load and validate the training data"):
        train_dataset = load_checked_dataset(script_args)
    # R1-V's pixels (PIL backend) and pixel budget per image (min 3136, max 401408).
    processor = load_processor(model_args.model_name_or_path, image_backend=script_args.image_backend,
                               min_pixels=script_args.min_pixels, max_pixels=script_args.max_pixels,
                               revision=model_args.model_revision)
    trainer = R1VGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        dedup_vision=script_args.dedup_vision, group_micro_batches=script_args.group_micro_batches,
        process_images_once=script_args.process_images_once, compile_generation=script_args.compile_generation,
        send_images_once=script_args.send_images_once, rope_index_once=script_args.rope_index_once,
        callbacks=[*training_callbacks(script_args, reward_names, _source(script_args, model_args)),
                   StopAtStepCallback(script_args.stop_at_step),
                   *(callbacks or [])],
    )
    # One readable line per step (StepLogCallback) instead of transformers' dict dump (it replaces
    # the progress bar when disable_tqdm is set, as in our recipes).
    trainer.remove_callback(PrinterCallback)
    return trainer


def _source(script_args: R1VScriptArguments, model_args: ModelConfig) -> dict[str, str]:
    """The model and data revisions this run trains on (the marker's `source`, r1v_train_source_info)."""
    return ckpt.source_revisions(model_args.model_name_or_path, script_args.dataset_name, model_args.model_revision)


def run(script_args: R1VScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
        callbacks: list | None = None) -> R1VGRPOTrainer | None:
    """Train, save the final model, write the completion marker. Returns the trainer, or None when
    there was nothing to train (the run had reached its last step).

    Where a run starts and stops, what it leaves and its exit code: r1v_job.restarts. SIGTERM: the
    step in flight ends, a checkpoint of it is saved, and Preempted is raised (r1v_job.preemption);
    before training starts it is raised at once.
    """
    source = partial(_source, script_args, model_args)  # the marker's source, read only where one is written
    with StopRequest.from_env().installed() as stop:
        run_checks(script_args, training_args, model_args)
        with output_dir_lease(script_args, training_args) as lease:
            resume = restarts.resume_point(script_args, training_args)
            if restarts.finished_before_training(script_args, training_args, resume, source):
                return None
            trainer = build_trainer(script_args, training_args, model_args, callbacks)
            preemption = restarts.train(trainer, script_args, resume, stop, lease, source)
            if preemption is None:
                return None
            restarts.raise_if_stopped(preemption, training_args, lease)
            restarts.save_final_model(trainer, script_args.completion_marker, source)
            stop.deferred = False  # finished: a SIGTERM from here on ends the metrics grace period, nothing else
            if not stop.requested:
                try:
                    finish_training_metrics(trainer)  # rank 0: the final values stay scrapeable a while
                except Preempted:
                    logger.info("SIGTERM after the run finished: not serving the final metrics any longer")
            return trainer


@contextmanager
def output_dir_lease(script_args: R1VScriptArguments, training_args: GRPOConfig):
    """Rank 0 holds the output_dir's lease (r1v_job.lease) from before anything is written or loaded
    until the run ends; the other ranks write what rank 0 coordinates."""
    if not is_main_process() or not script_args.output_dir_lease_stale_minutes:
        yield None
        return
    lease = Lease(training_args.output_dir, script_args.output_dir_lease_stale_minutes)
    try:
        # Inside: a SIGTERM between creating the file and starting the heartbeat must not leave the
        # lease behind (release() removes only a lease file this one wrote).
        lease.acquire()
        yield lease
    finally:
        lease.release()


class _Parser(TrlParser):
    """TrlParser whose errors are one line (argparse's own prints the usage of ~300 options), and
    that takes no abbreviations: argparse would read a misspelt `--learning_rat` as `--learning_rate`."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise UsageError(message)


def parse_args(argv: list[str] | None = None):
    """The recipe (`--config FILE`) and command line as (script, GRPOConfig, ModelConfig); UsageError
    names a missing or unparsable config file and every unknown key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise UsageError("--config: expected a YAML file")
        config = argv[at + 1]
        try:
            recipe = yaml.safe_load(Path(config).read_text())
        except OSError as exc:
            raise UsageError(f"--config {config}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise UsageError(f"--config {config}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if isinstance(recipe, dict):  # TrlParser names a file that is not a mapping itself
            check_recipe_types(recipe, config, (R1VScriptArguments, GRPOConfig, ModelConfig))
        check_chart_keys(config, recipe)
    parser = _Parser((R1VScriptArguments, GRPOConfig, ModelConfig))
    try:
        *parsed, from_config, from_cli = parser.parse_args_and_config(
            args=argv, return_remaining_strings=True, separate_remaining_strings=True)
    except (ValueError, TypeError) as exc:  # a dataclass __post_init__ refusing a value
        raise UsageError(" ".join(str(exc).split())) from None
    unknown = [s[2:] for s in from_config if s.startswith("--")]
    if unknown:
        raise UsageError(f"--config {config}: unknown key(s) {unknown}; see `python -m r1v_job --help` for the fields")
    if from_cli:
        raise UsageError(f"unknown argument(s) {from_cli}; see `python -m r1v_job --help` for the fields")
    return tuple(parsed)


def main(argv: list[str] | None = None) -> int:
    """`python -m r1v_job`: the exit code (0 done, 2 bad input, 143 preempted, 1 disk full); crashes
    propagate (exit 1)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("R1V_DEBUG", "").lower() not in ("", "0", "false") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        script_args, training_args, model_args = parse_args(argv)
        # Only rank 0 speaks, unless told otherwise: 8 ranks x 8 GPUs of identical lines help nobody.
        if not is_main_process():
            logging.getLogger().setLevel(logging.WARNING)
        transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
        if script_args.preflight_only:
            run_checks(script_args, training_args, model_args)
            if Path(script_args.dataset_name).exists() or not script_args.offline_bootstrap:
                rows = len(load_checked_dataset(script_args))
                logger.info("preflight: %d usable training rows in %s", rows, script_args.dataset_name)
            logger.info("preflight passed: the recipe, rewards, model path, data set and metrics port are usable")
            return 0
        run(script_args, training_args, model_args)
    except restarts.OUTCOMES as outcome:
        return restarts.exit_code(outcome, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
