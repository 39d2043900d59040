"""GRPO on a vision-language model with R1-V's recipe, on TRL's GRPOTrainer.

    python -m r1v_job --config recipes/r1v_qwen2vl_2b_clevr.yaml [--field value ...]
    torchrun --nproc_per_node 8 -m r1v_job --config ...      (in a PyTorchJob: torchrun reads PET_*)

One YAML holds GRPOConfig, ModelConfig and R1VScriptArguments fields; the command line overrides any.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
import transformers
from transformers import AutoProcessor, PrinterCallback
from trl import GRPOConfig, ModelConfig, TrlParser

from .checkpoints import latest_complete_checkpoint, write_completion_marker
from .config import R1VScriptArguments
from .data import load_train_dataset
from .metrics import PrometheusCallback, StepLogCallback
from .rewards import get_reward_funcs
from .trainer import R1VGRPOTrainer, StopAtStepCallback

logger = logging.getLogger("r1v_job")


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
    """Build the tiny model and synthetic scenes a laptop recipe points at, when they are missing."""
    from .synthetic import write_clevr_train
    from .tiny import save_tiny_model

    model_dir = Path(model_args.model_name_or_path)
    if not (model_dir / "config.json").exists():
        logger.info("offline_bootstrap: writing a tiny Qwen2-VL to %s", model_dir)
        save_tiny_model(model_dir)
    data = Path(script_args.dataset_name)
    if not data.exists():
        if data.suffix != ".jsonl":
            raise ValueError(f"offline_bootstrap: dataset_name {data} must end in .jsonl to be drawn synthetically")
        logger.info("offline_bootstrap: drawing %d synthetic scenes to %s", script_args.bootstrap_scenes, data)
        written = write_clevr_train(data.parent, script_args.bootstrap_scenes)
        if written != data:
            written.rename(data)


def build_trainer(script_args: R1VScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
                  callbacks: list | None = None) -> R1VGRPOTrainer:
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
    processor = AutoProcessor.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        # Qwen2-VL's pixel budget per image (R1-V: min 3136, max 401408), in transformers 5's form.
        size={"shortest_edge": script_args.min_pixels, "longest_edge": script_args.max_pixels},
        padding_side="left",  # generation appends on the right
    )
    with training_args.main_process_first(desc="load and validate the training data"):
        train_dataset = load_train_dataset(
            script_args.dataset_name,
            split=script_args.dataset_train_split,
            config=script_args.dataset_config,
            image_root=script_args.image_root,
            max_samples=script_args.max_train_samples,
        )
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    trainer = R1VGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        dedup_vision=script_args.dedup_vision, group_micro_batches=script_args.group_micro_batches,
        process_images_once=script_args.process_images_once, compile_generation=script_args.compile_generation,
        callbacks=[PrometheusCallback(script_args.metrics_port, script_args.reward_funcs),
                   StepLogCallback(script_args.reward_funcs), StopAtStepCallback(script_args.stop_at_step),
                   *(callbacks or [])],
    )
    # One readable line per step (StepLogCallback) instead of transformers' dict dump (it replaces
    # the progress bar when disable_tqdm is set, as in our recipes).
    trainer.remove_callback(PrinterCallback)
    return trainer


def run(script_args: R1VScriptArguments, training_args: GRPOConfig, model_args: ModelConfig,
        callbacks: list | None = None) -> R1VGRPOTrainer:
    """Train, save the final model, write the completion marker. Returns the trainer."""
    trainer = build_trainer(script_args, training_args, model_args, callbacks)
    resume = training_args.resume_from_checkpoint
    if resume is None and script_args.auto_resume:
        resume = latest_complete_checkpoint(training_args.output_dir)
        if resume is not None:
            logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.save_model(training_args.output_dir)  # on every rank: ZeRO-3 gathers the shards collectively
    if trainer.accelerator.is_main_process:
        marker = write_completion_marker(training_args.output_dir, script_args.completion_marker,
                                         trainer.state.global_step)
        logger.info("final model in %s; completion marker %s", training_args.output_dir, marker)
    trainer.accelerator.wait_for_everyone()
    return trainer


def parse_args(argv: list[str] | None = None):
    parser = TrlParser((R1VScriptArguments, GRPOConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    script_args, training_args, model_args = parse_args(argv)
    # Only rank 0 speaks, unless told otherwise: 8 ranks x 8 GPUs of identical lines help nobody.
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    run(script_args, training_args, model_args)


if __name__ == "__main__":
    main()
