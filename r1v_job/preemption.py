"""What a cluster does to a run every day: SIGTERM (preemption, node drain, eviction) and full disks.

SIGTERM while training: the step in flight finishes, every rank agrees to stop at the same step (an
all-reduce of the "stop requested" flag at each step end: under DDP and DeepSpeed only some ranks,
or only one node, may have been signalled), a checkpoint of that step is written and fsynced, and
the process exits PREEMPTED (143, 128 + SIGTERM, as a shell reports a process ended by SIGTERM: the
Training Operator's ExitCode policy and the chart's podFailurePolicy retry it and the launcher's
restart budget never counts it). When the grace period left cannot fit a save (the last save's
duration is the estimate), the run says so and stops without one. SIGTERM before training starts
stops at once: nothing is lost there; that exit is 143 too, but only a stop all ranks agreed on
creates R1V_PREEMPTED_FILE (torchrun also SIGTERMs the other workers when one crashes in setup,
and that crash must count).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PREEMPTED = 143
# Seconds the pod has between SIGTERM and SIGKILL (the chart passes terminationGracePeriodSeconds
# less the launcher's margin); unset: no deadline, a checkpoint is always attempted.
GRACE_ENV = "R1V_GRACE_SECONDS"
# A file the launcher names: the trainer creates it when it stops preempted, so the launcher can
# tell a preemption from a crash although torchrun reports both as exit 1.
PREEMPTED_FILE_ENV = "R1V_PREEMPTED_FILE"
# Likewise for a permanent error (bad input, a lost lease: exit 2) raised in a worker after the
# preflight: torchrun turns the worker's 2 into its own 1, which the launcher would retry as a crash.
PERMANENT_FILE_ENV = "R1V_PERMANENT_FILE"
# Below this many free bytes a failed write is taken for a full disk (torch.save reports ENOSPC as
# "unexpected pos N vs M", with no errno).
_NEARLY_FULL = 16 << 20


class Preempted(BaseException):
    """The run stopped on SIGTERM. A BaseException: raised by the signal handler before training
    starts, no `except Exception` in transformers, TRL or datasets may swallow it."""


class DiskFull(OSError):
    """ENOSPC while writing `filename`; what was half-written there is removed."""

    def __init__(self, path: Path, what: str):
        super().__init__(errno.ENOSPC, f"no space left on device (ENOSPC) writing {path}: {what}", str(path))

    def __str__(self) -> str:
        return self.strerror


class StopRequest:
    """The SIGTERM handler and what it received. Before training (and after the run finished) the
    signal stops the process at once; while `deferred`, it is only recorded, for PreemptionCallback."""

    def __init__(self, grace_seconds: float | None = None):
        self.grace_seconds = grace_seconds
        self.received_at: float | None = None
        self.deferred = False

    @classmethod
    def from_env(cls) -> StopRequest:
        value = os.environ.get(GRACE_ENV, "").strip()
        return cls(float(value) if value else None)

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    def seconds_left(self) -> float:
        if self.received_at is None or self.grace_seconds is None:
            return float("inf")
        return self.grace_seconds - (time.monotonic() - self.received_at)

    def _handle(self, signum, frame) -> None:
        first = self.received_at is None
        if first:
            self.received_at = time.monotonic()
        if not self.deferred:
            raise Preempted("SIGTERM outside the training loop: nothing to save")
        if first:
            grace = f"{self.grace_seconds:.0f} s" if self.grace_seconds is not None else "no deadline"
            logger.warning("SIGTERM (preemption, drain or eviction): finishing the step in flight, then saving a "
                           "checkpoint (grace period %s)", grace)

    @contextmanager
    def installed(self):
        """The handler for the block (main thread only; elsewhere the signal keeps its default)."""
        try:
            previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


class PreemptionCallback(TrainerCallback):
    """At each step end, every rank learns whether any rank got SIGTERM and the least grace time
    left among them; then all stop, and save that step when the last save's duration fits.

    The same all-reduce carries whether rank 0's output_dir lease was taken over: then every rank
    stops at that step without saving (another writer owns the folder), and `run` raises LeaseLost on
    every rank. A rank raising alone would leave the others blocked in this collective."""

    def __init__(self, stop: StopRequest, lease=None):
        self.stop = stop
        self.lease = lease  # rank 0's output_dir lease (r1v_job.lease), None on the other ranks
        self.lease_lost = False  # some rank's lease was taken over: every rank stopped, nothing saved
        self.stopped_at: int | None = None  # the step training stopped after, on SIGTERM
        self.saved = False
        self.save_seconds: float | None = None  # the last checkpoint save, step end to on_save
        self._step_end: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.stop.deferred = True
        return control

    def agree(self, args) -> tuple[bool, float, bool]:
        """(stop requested on any rank, least grace left, lease lost on any rank); collective: every
        rank calls it at the same point."""
        requested, left = self.stop.requested, self.stop.seconds_left()
        lost = self.lease is not None and self.lease.lost is not None
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # One all-reduce of three numbers per step: max(flag), max(-left) = -min(left), max(lost).
            flags = torch.tensor([float(requested), -min(left, 1e12), float(lost)], dtype=torch.float64,
                                 device=args.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            requested, left, lost = bool(flags[0].item() > 0), -flags[1].item(), bool(flags[2].item() > 0)
        return requested, left, lost

    def on_step_end(self, args, state, control, **kwargs):
        self._step_end = time.monotonic()
        requested, left, lost = self.agree(args)
        if lost:
            self.lease_lost = True
            control.should_training_stop = True
            control.should_save = False  # the folder is another writer's now
            return control
        if not requested:
            return control
        control.should_training_stop = True
        self.stopped_at = state.global_step
        need = self.save_seconds
        if need is not None and need * 1.25 > left:
            control.should_save = False
            logger.warning("SIGTERM: %.0f s of the grace period left, the last checkpoint save took %.0f s: stopping "
                           "after step %d without a checkpoint; the restart resumes from the newest complete one",
                           max(left, 0), need, state.global_step)
        else:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self._step_end is not None:
            self.save_seconds = time.monotonic() - self._step_end
        if self.stopped_at == state.global_step:
            self.saved = True
        return control


def mark_preempted() -> None:
    """Tell the launcher (R1V_PREEMPTED_FILE) that this exit is a preemption, not a crash. Called only
    where every rank agreed to stop at a step end: a rank that torchrun stops because another worker
    died is no preemption (the launcher learns of a SIGTERM to its own pod through its trap)."""
    _mark(PREEMPTED_FILE_ENV)


def mark_permanent() -> None:
    """Tell the launcher (R1V_PERMANENT_FILE) that this exit 2 is permanent, not a crash."""
    _mark(PERMANENT_FILE_ENV)


def _mark(env: str) -> None:
    path = os.environ.get(env)
    if path:
        try:
            Path(path).touch()
        except OSError as exc:
            logger.warning("could not create %s: %s", path, exc)


# --- full disks --------------------------------------------------------------------------------

def is_disk_full(exc: BaseException, path: Path) -> bool:
    """ENOSPC anywhere in the exception's chain, or a failed write on a filesystem with (almost) no
    free space left: torch.save and safetensors do not always carry the errno."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


def remove_partial(path: Path) -> None:
    """Removes a half-written checkpoint folder (or file) so that it stops filling the disk."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
