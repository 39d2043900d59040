"""TRL's GRPOTrainer with the project's few overrides: each one a method, each with its reason."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import trl.trainer.grpo_trainer as trl_grpo
from transformers import TrainerCallback
from trl import GRPOTrainer

from .config import last_step
from .image_work import decode_images_once, images_decoded_on_use, process_each_image_once
from .vision_dedup import enable_vision_dedup

logger = logging.getLogger(__name__)


class StopAtStepCallback(TrainerCallback):
    """Ends training after `stop_at_step` optimizer steps without shortening the LR schedule.

    `max_steps` sets both when transformers stops and the horizon a linear schedule decays over, so
    R1-V's step-100 checkpoint of an 8,750-step schedule needs a separate stop. The step is saved as
    a checkpoint (as the last step of a normal run is), then `run` saves the final model.
    """

    def __init__(self, stop_at_step: int | None):
        self.stop_at_step = stop_at_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at_step is not None and state.global_step >= last_step(state.max_steps, self.stop_at_step):
            control.should_training_stop = True
            control.should_save = True
        return control


class R1VGRPOTrainer(GRPOTrainer):
    """GRPOTrainer, unchanged but for the overrides below."""

    # --- Speed levers (issue 12) ---------------------------------------------------------------
    # Measured on one H200 (docs/performance.md): of an 8.9 s 128-rollout step, the vision tower on
    # 8 copies of every image was ~2.4 s of repeated work and CPU image work ~2.1 s ("other"). The
    # levers below remove both without changing the algorithm; each has a recipe switch
    # (r1v_job.config) so the bench can measure it alone. Compiled decoding is opt-in, unmeasured.

    def __init__(self, *args, dedup_vision: bool = True, group_micro_batches: bool = True,
                 process_images_once: bool = True, compile_generation: bool = False, **kwargs):
        self.dedup_vision, self.group_micro_batches = dedup_vision, group_micro_batches
        self.process_images_once, self.compile_generation = process_images_once, compile_generation
        if process_images_once and kwargs.get("train_dataset") is not None:
            kwargs["train_dataset"] = images_decoded_on_use(kwargs["train_dataset"])
        super().__init__(*args, **kwargs)
        if dedup_vision:
            for model in (self.model, self.ref_model):
                if model is not None:
                    enable_vision_dedup(model)
        if compile_generation:
            # TRL builds its GenerationConfig with disable_compile=True; a static cache is what lets
            # transformers compile the decode step (on CUDA) instead of running ~30 ms of eager launches.
            self.generation_config.cache_implementation = "static"
            self.generation_config.disable_compile = False
            if self.generation_kwargs is not None:
                self.generation_kwargs["cache_implementation"] = "static"

    def _prepare_inputs(self, generation_batch):
        # TRL shuffles single rollouts before cutting micro-batches, so a 16-rollout micro-batch holds
        # ~10 distinct images instead of 2 and vision dedup saves little. Shuffling whole groups keeps
        # every micro-batch made of whole groups; with loss_type grpo/dapo and equal micro-batches the
        # step's gradient is the same (tests/trainer/test_speed_levers.py).
        if not (self.group_micro_batches and self.model.training):
            return super()._prepare_inputs(generation_batch)
        with _shuffle_whole_groups(self.num_generations):
            return super()._prepare_inputs(generation_batch)

    def _generate_and_score_completions(self, inputs):
        # The dataset hands over undecoded images (images_decoded_on_use): the Trainer prefetches one
        # batch per accumulation step and TRL uses only the first, so decoding happens here, once per
        # distinct image. The same PIL object then serves all of a prompt's rollouts, and the image
        # processor runs once per distinct image for TRL's two processor calls of the step.
        if not self.process_images_once:
            return super()._generate_and_score_completions(inputs)
        inputs = decode_images_once(inputs)
        with process_each_image_once(self.processing_class):
            return super()._generate_and_score_completions(inputs)


_warned_partial_groups: list = []


@contextmanager
def _shuffle_whole_groups(group: int):
    """Within the block, TRL's rollout shuffle before micro-batching permutes whole groups of `group`
    consecutive rollouts instead of single rollouts. Groups are consecutive rows: TRL's sampler lays
    them out so, and its advantages (`rewards.view(-1, num_generations)`) rely on it too. A batch that
    is not whole groups (a prompt's rollouts spread over processes) is shuffled TRL's way."""
    shuffle = trl_grpo.shuffle_sequence_dict

    def shuffle_groups(batch: dict) -> dict:
        rows = len(next(v for v in batch.values() if v is not None))
        if rows % group:
            if not _warned_partial_groups:
                _warned_partial_groups.append(rows)
                logger.warning("group_micro_batches: %d rollouts per process are not whole groups of %d (a "
                               "prompt's rollouts span processes); shuffling single rollouts as TRL does", rows, group)
            return shuffle(batch)
        # TRL's own draw, so the random stream after it (next steps' sampling) stays TRL's; the order in
        # which groups first appear in a uniform permutation is a uniform order of the groups.
        first_seen = dict.fromkeys((torch.randperm(rows) // group).tolist())
        order = (torch.tensor(list(first_seen))[:, None] * group + torch.arange(group)).flatten()
        return {key: value if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0)
                else value[order] if isinstance(value, torch.Tensor) else [value[i] for i in order]
                for key, value in batch.items()}

    trl_grpo.shuffle_sequence_dict = shuffle_groups
    try:
        yield
    finally:
        trl_grpo.shuffle_sequence_dict = shuffle
