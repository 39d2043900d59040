"""TRL's GRPOTrainer with the project's few overrides: each one a method, each with its reason."""

from __future__ import annotations

import logging

from transformers import TrainerCallback
from trl import GRPOTrainer

from .config import last_step

logger = logging.getLogger("r1v_job")


class StopAtStepCallback(TrainerCallback):
    """Ends training after `stop_at_step` optimizer steps without shortening the LR schedule.

    `max_steps` sets both when transformers stops and the horizon a linear schedule decays over, so
    R1-V's step-100 checkpoint of an 8,750-step schedule needs a separate stop. The step is saved as
    a checkpoint (as the last step of a normal run is), then `run` saves the final model.
    """

    def __init__(self, stop_at_step: int | None):
        self.stop_at_step = stop_at_step

    def on_train_begin(self, args, state, control, **kwargs):
        stop = last_step(state.max_steps, self.stop_at_step)
        logger.info("LR schedule: %s over %d steps; training stops at step %d", args.lr_scheduler_type,
                    state.max_steps, stop)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_at_step is not None and state.global_step >= last_step(state.max_steps, self.stop_at_step):
            control.should_training_stop = True
            control.should_save = True
        return control


class R1VGRPOTrainer(GRPOTrainer):
    """GRPOTrainer, unchanged but for the overrides below."""
