"""The trainer's restart rules: where a run starts, where it stops, what it leaves behind, its exit code.

A pod restarted by the operator, or the same command run again on the same output_dir
(docs/operations.md, "Restarts"), finds there:

- nothing: it trains from step 0;
- checkpoints, the newest below the last step: it resumes the newest complete checkpoint
  (`resume_point`; a half-written or corrupt one is skipped with a warning, checkpoints.py) and
  trains to the last step, removing the completion marker when training starts
  (`RemoveMarkerCallback`): while a run trains, its output_dir never says it is finished;
- a checkpoint at the last step and a marker that matches the final model: it says the run already
  finished, trains and writes nothing, exit 0 (`finish_without_training`);
- a checkpoint at the last step and no valid marker (killed during the final save): that checkpoint's
  model files become the final model and the marker is written, without loading a model, exit 0;
- a matching marker at the last step and no checkpoint kept: already finished, exit 0;
- a finished run restarted with a higher stop_at_step: the marker goes, training goes on to the new
  stop step with the schedule's horizon unchanged.

The last step (`last_step`) is stop_at_step when set and before the schedule's horizon, else the
horizon; a run never trains past it (`StopAtStepCallback`, and `check_not_past_last_step` for a
resume from a checkpoint at the last step, which transformers would train one step further). With
max_steps -1 (epochs) the last step is known once the data is read: the trainer's own check then
raises NothingToTrain and the run finishes without training.

How each outcome ends (docs/operations.md, "Signals, exit codes and restarts"; `exit_code`):

- 0: trained, saved the final model and wrote the marker (`save_final_model`), or already finished;
- 143 (PREEMPTED): SIGTERM. Every rank agreed at a step end to stop there (the mechanism:
  r1v_job.preemption) and saved that step when the rest of the grace period fits a save, else stopped
  without one; the restart resumes from the newest complete checkpoint (`raise_if_stopped`). Before
  training starts it stops at once, nothing to save; after the final model it only ends the metrics
  grace period (exit 0). A SIGKILL leaves a half-written checkpoint, which the restart skips;
- 2: bad input (UsageError, DataError, a checkpoint that does not fit the model), refused before
  anything is written, a second writer on output_dir (LeaseHeld) and a lease taken over while
  training (LeaseLost, on every rank at the same step: r1v_job.lease); permanent, so the launcher is
  also told by a file (R1V_PERMANENT_FILE), as torchrun turns a worker's 2 into its own 1;
- 1: a full disk while saving a checkpoint (R1VGRPOTrainer._save_checkpoint), the final model or the
  marker (DiskFull: one line, the half-written files removed; the restart resumes from the newest
  complete checkpoint, or makes the last-step checkpoint the final model), or any crash.

The pod side of these rules is charts/r1v/files/launch.sh: it turns torchrun's outcome and the
permanent and preempted files the trainer creates into the pod's exit code (0, 2, 3, 143, 200, 128+N)
and keeps the crash budget.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from . import checkpoints as ckpt
from .data import DataError
from .lease import LEASE_FILE, Lease, LeaseLost
from .preflight import UsageError
from .preemption import (PREEMPTED, DiskFull, Preempted, PreemptionCallback, is_disk_full, mark_permanent,
                         mark_preempted, remove_partial)

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 (torchrun's RANK), which alone writes the final model's marker and speaks for all."""
    return int(os.environ.get("RANK", "0")) == 0


def last_step(max_steps: int, stop_at_step: int | None) -> int:
    """The step a run ends at: `stop_at_step` when it comes before the schedule's horizon `max_steps`."""
    return max_steps if stop_at_step is None else min(stop_at_step, max_steps)


class NothingToTrain(Exception):
    """The checkpoint resumed from is already at (or past) the run's last step."""

    def __init__(self, global_step: int, last: int):
        super().__init__(f"the checkpoint is at step {global_step}, the run ends at step {last}")
        self.global_step = global_step


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


class RemoveMarkerCallback(TrainerCallback):
    """Removes the completion marker when training starts (after the resume state is loaded and the
    last-step check has passed): while a run trains, its output_dir never says it is finished."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and ckpt.remove_completion_marker(args.output_dir, self.marker):
            logger.info("removed %s: the run trains on, so the model there is no longer final",
                        Path(args.output_dir) / self.marker)
        return control


def check_not_past_last_step(global_step: int, max_steps: int, callbacks) -> None:
    """Raises NothingToTrain when the state the trainer resumed is at the run's last step already
    (`max_steps` as the trainer computed it, the stop step from `callbacks`' StopAtStepCallback)."""
    stop = next((cb.stop_at_step for cb in callbacks if isinstance(cb, StopAtStepCallback)), None)
    if global_step >= last_step(max_steps, stop):
        raise NothingToTrain(global_step, last_step(max_steps, stop))


# --- where a run starts ------------------------------------------------------------------------

def resume_point(script_args, training_args) -> Path | None:
    """The checkpoint to resume: resume_from_checkpoint (refused, exit 2, unless complete), else with
    auto_resume the newest complete checkpoint in output_dir; None: step 0."""
    resume = training_args.resume_from_checkpoint
    training_state = not training_args.save_only_model
    if resume is not None:
        if problem := ckpt.checkpoint_problem(Path(resume), training_state):
            raise UsageError(f"resume_from_checkpoint {resume}: {problem}")
        return Path(resume)
    if script_args.auto_resume:
        return ckpt.latest_complete_checkpoint(Path(training_args.output_dir), training_state)
    return None


def finished_before_training(script_args, training_args, resume: Path | None,
                             source: Callable[[], dict[str, str]]) -> bool:
    """True when the run is at its last step already and has been finished without training (said so,
    or the final save completed); False: train from `resume`. `source` gives the marker's source."""
    out, marker_name = Path(training_args.output_dir), script_args.completion_marker
    done = ckpt.checkpoint_step(resume) if resume is not None else 0
    # The last step, or a bound on it, before any data is read: max_steps -1 (epochs) needs the data
    # set's size, and then the trainer's own check (NothingToTrain) decides.
    bound = (last_step(training_args.max_steps, script_args.stop_at_step) if training_args.max_steps > 0
             else script_args.stop_at_step)
    if bound is not None and done >= bound:
        finish_without_training(out, marker_name, resume, done, source=source())
        return True
    if bound is not None and resume is None and (marker := finished(out, marker_name, bound)) is not None:
        finish_without_training(out, marker_name, None, bound, marker)  # finished, with no checkpoints kept
        return True
    if resume is not None:
        logger.info("resuming from %s (step %d)", resume, done)
    return False


def finished(output_dir: Path, marker_name: str, at_least: int) -> dict | None:
    """The completion marker when it matches the final model's files and is at step `at_least` or later.

    Every rank checks the digests: a rank that judged by sizes alone could find the run finished while
    rank 0 trains again, and rank 0 would then wait on it at its first collective until ddp_timeout.
    """
    marker = ckpt.read_marker(output_dir, marker_name)
    if marker is None:
        return None
    problem = ckpt.marker_problem(output_dir, marker, digests=True)
    if problem:
        logger.warning("%s does not match the final model (%s): finishing the run again",
                       output_dir / marker_name, problem)
        return None
    return marker if marker["global_step"] >= at_least else None


def finish_without_training(output_dir: Path, marker_name: str, checkpoint: Path | None, step: int,
                            marker: dict | None = None, source: dict[str, str] | None = None) -> None:
    """The run is at its last step already: say so, or complete a final save that was cut short."""
    if checkpoint is not None and not is_main_process():
        return  # rank 0 alone says so or finishes it: no need to hash the final model on every rank
    if marker is None:
        marker = finished(output_dir, marker_name, step)
    if marker is not None:
        logger.info("%s: the run already finished at step %d (%s matches the final model); nothing to train or "
                    "write. Raise stop_at_step to train on, or use a new output_dir.", output_dir,
                    marker["global_step"], marker_name)
        return
    if checkpoint is None:
        raise UsageError(f"{output_dir}: at the last step {step} but no checkpoint holds it; use a new output_dir")
    if is_main_process():
        ckpt.remove_completion_marker(output_dir, marker_name)
        logger.info("%s: %s is at the run's last step %d; making it the final model (no training)",
                    output_dir, checkpoint.name, step)
        with disk_full_is_one_line(output_dir, f"the final model from {checkpoint.name}", weights=True):
            ckpt.finish_from_checkpoint(checkpoint, output_dir)
        with disk_full_is_one_line(output_dir, f"the completion marker {marker_name}"):
            marker_path = ckpt.write_completion_marker(output_dir, marker_name, step, source)
        logger.info("final model in %s; completion marker %s", output_dir, marker_path)


# --- while it trains ---------------------------------------------------------------------------

def train(trainer, script_args, resume: Path | None, stop, lease: Lease | None,
          source: Callable[[], dict[str, str]]) -> PreemptionCallback | None:
    """Trains from `resume` with the marker removed once training starts and the per-step stop
    agreement (SIGTERM, a lost lease) last among the callbacks. Returns that agreement's callback,
    or None when the trainer found the run at its last step and it was finished without training."""
    trainer.add_callback(RemoveMarkerCallback(script_args.completion_marker))
    preemption = PreemptionCallback(stop, lease)  # also stops every rank together on a lost lease
    trainer.add_callback(preemption)  # last: it may override the save the callbacks before it asked for
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    except NothingToTrain as reached:
        finish_without_training(Path(trainer.args.output_dir), script_args.completion_marker, resume,
                                reached.global_step, source=source())
        return None
    return preemption


def raise_if_stopped(preemption: PreemptionCallback, training_args, lease: Lease | None) -> None:
    """After the last step end (its save included), on every rank: LeaseLost when the lease was taken
    over (exit 2), Preempted when every rank stopped on a SIGTERM (exit 143, the launcher told)."""
    out = Path(training_args.output_dir)
    # Once more after the last step end, on every rank: the lease may be lost since.
    if preemption.lease_lost or preemption.agree(training_args)[2]:
        if lease is not None:
            lease.check()
        raise LeaseLost(f"output_dir {out}: the lease was taken over by another writer (rank 0 names it); "
                        "stopping so the two runs do not overwrite each other")
    if preemption.stopped_at is not None:
        step = preemption.stopped_at
        mark_preempted()  # every rank agreed to stop here on a SIGTERM: a preemption, not a crash
        if preemption.saved:
            raise Preempted(f"stopped on SIGTERM after step {step}; {out / f'checkpoint-{step}'} is saved and "
                            "fsynced; the restart resumes from it")
        newest = ckpt.latest_complete_checkpoint(out, not training_args.save_only_model)
        raise Preempted(f"stopped on SIGTERM after step {step} without a checkpoint (no time left to save one); "
                        f"the restart resumes from {newest or 'step 0'}")


# --- what it leaves ----------------------------------------------------------------------------

def save_final_model(trainer, marker_name: str, source: Callable[[], dict[str, str]]) -> None:
    """The final model in output_dir, then (rank 0) the completion marker; a full disk is DiskFull
    with the half-written files removed, and the restart finishes from the last checkpoint."""
    out = Path(trainer.args.output_dir)
    try:
        trainer.save_model(trainer.args.output_dir)  # on every rank: ZeRO-3 gathers the shards collectively
    except Exception as exc:
        if not is_disk_full(exc, out):
            raise
        if trainer.accelerator.is_local_main_process:
            for partial in ckpt.final_weights(out):
                remove_partial(partial)
        raise DiskFull(out, f"the final model ({type(exc).__name__}); removed its partial weights; the restart "
                       "finishes the run from the last checkpoint once space is freed") from exc
    if trainer.accelerator.is_main_process:
        with disk_full_is_one_line(out, f"the completion marker {marker_name}"):
            marker = ckpt.write_completion_marker(out, marker_name, trainer.state.global_step, source())
        logger.info("final model in %s; completion marker %s", out, marker)
    trainer.accelerator.wait_for_everyone()


@contextmanager
def disk_full_is_one_line(output_dir: Path, what: str, weights: bool = False):
    """A full disk while writing the final model or the marker is DiskFull (one line, exit 1), with
    the half-written files removed: the temporary copies, and with `weights` the final weights (a
    partial set); the restart finishes the run from the last checkpoint once space is freed."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc, output_dir):
            raise
        partial = [p for p in output_dir.glob(".*.tmp") if not p.name.startswith(f".{LEASE_FILE}")]
        for path in partial + (ckpt.final_weights(output_dir) if weights else []):
            remove_partial(path)
        raise DiskFull(output_dir, f"{what} ({type(exc).__name__}); removed what was half-written; the restart "
                       "finishes the run from the last checkpoint once space is freed") from exc


# --- how it ends -------------------------------------------------------------------------------

OUTCOMES = (Preempted, DiskFull, UsageError, DataError)


def exit_code(outcome: BaseException, debug: bool = False) -> int:
    """The exit code of a run that ended with one of OUTCOMES, after its one line on stderr: 143
    preempted, 1 a full disk (retried), 2 bad input or a lost lease (permanent: R1V_PERMANENT_FILE,
    since under torchrun this 2 becomes torchrun's 1). Called while `outcome` is being handled."""
    if isinstance(outcome, Preempted):
        if is_main_process():  # every rank stopped at the same step: one line says so
            print(f"r1v_job: preempted: {outcome}; exit {PREEMPTED}", file=sys.stderr)
        return PREEMPTED
    if isinstance(outcome, DiskFull):
        print(f"r1v_job: error: {outcome}", file=sys.stderr)
        return 1
    if debug:
        traceback.print_exc()
    print(f"r1v_job: error: {' '.join(str(outcome).split())}", file=sys.stderr)
    mark_permanent()  # under torchrun this 2 becomes torchrun's 1: the launcher reads the file instead
    return 2
