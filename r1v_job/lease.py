"""One writer per output_dir: a lease file that names the process writing there.

A duplicated pod after a network partition, or two releases pointed at one folder, would otherwise
both train into the same output_dir, each overwriting the other's checkpoints while the evaluator
scores whichever file it finds. Rank 0 takes the lease before the model loads and holds it until the
process ends:

- `OUTPUT_DIR/.r1v-lease.json` records the owner (pod, host, pid, the process's start time and the
  host's boot id) and a heartbeat, renewed every `heartbeat_seconds` by a background thread;
- a second writer finds the lease held and exits 2 naming the owner. Held means: on the same host
  (same hostname and boot id), the owner's process is still running (pid and start time match); on
  another host, its heartbeat moved while the newcomer watched (for two and a half heartbeat intervals);
- a lease whose heartbeat has not moved for `stale_minutes` is stale: its holder died without
  releasing it (node lost, SIGKILL). It is taken over with a warning naming the old owner. A lease
  whose holder is gone from this host (a restarted container) is taken over at once;
- the lease is removed when the run ends, as is the output_dir if taking the lease created it and
  nothing else was written there.

The file is replaced atomically (temp file + rename), never edited in place. Two newcomers taking
over one stale lease at the same instant both write it; the one whose write lost finds another owner
at its next heartbeat and stops (`LeaseLost`, exit 2) before its next save.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .preflight import UsageError

logger = logging.getLogger(__name__)

LEASE_FILE = ".r1v-lease.json"


class LeaseHeld(UsageError):
    """Another live process writes to this output_dir (exit 2)."""


class LeaseLost(UsageError):
    """This run's lease was taken over by another writer while it trained (exit 2)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22), or None
    when no such process exists here. With the pid it names one process for the life of a boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity() -> dict:
    host = socket.gethostname()
    return {"pod": os.environ.get("POD_NAME") or host, "namespace": os.environ.get("POD_NAMESPACE", ""),
            "host": host, "boot_id": _boot_id(), "pid": os.getpid(), "process_start": _process_start(os.getpid())}


def describe(record: dict) -> str:
    pod = record.get("pod", "?")
    where = f"{record.get('namespace')}/{pod}" if record.get("namespace") else pod
    beat = record.get("heartbeat")
    age = f", last heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"pod {where} (host {record.get('host', '?')}, pid {record.get('pid', '?')}{age})"


class Lease:
    """The lease on `output_dir`; `acquire` takes it or raises LeaseHeld, `release` gives it back."""

    def __init__(self, output_dir: str | Path, stale_minutes: float = 5.0, heartbeat_seconds: float = 30.0):
        self.dir = Path(output_dir)
        self.path = self.dir / LEASE_FILE
        self.stale_seconds = stale_minutes * 60
        self.heartbeat_seconds = min(heartbeat_seconds, self.stale_seconds / 3)
        self.token = uuid.uuid4().hex
        self.lost: dict | None = None  # the record found in place of ours, once taken over
        self._created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the file -------------------------------------------------------------------------------

    def _read(self) -> dict | None:
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written by a writer of another version: treated as held, stale by mtime
        return record if isinstance(record, dict) else {}

    def _record(self) -> dict:
        return {**identity(), "token": self.token, "heartbeat": time.time(),
                "stale_after_seconds": self.stale_seconds}

    def _write(self) -> None:
        tmp = self.dir / f".{LEASE_FILE}.{self.token}.tmp"
        with tmp.open("w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _create(self) -> bool:
        """Creates the lease file if there is none (O_EXCL: one of two creators wins)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _heartbeat_of(self, record: dict) -> float:
        beat = record.get("heartbeat")
        if isinstance(beat, (int, float)):
            return float(beat)
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    # --- taking it ------------------------------------------------------------------------------

    def _holder_alive_here(self, record: dict) -> bool | None:
        """On this host: whether the holder's process still runs. None: the holder is on another host."""
        me = identity()
        if not record.get("boot_id") or record.get("host") != me["host"] or record.get("boot_id") != me["boot_id"]:
            return None
        pid = record.get("pid")
        return isinstance(pid, int) and _process_start(pid) is not None and _process_start(pid) == record.get(
            "process_start")

    def acquire(self) -> None:
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            self._created_dir = True
        first = None  # (heartbeat, token) of another host's fresh lease when first seen
        deadline = 0.0
        while True:
            if self._create():
                break
            record = self._read()
            if record is None:
                continue  # released between our two looks
            beat = self._heartbeat_of(record)
            alive = self._holder_alive_here(record)
            if alive is True:
                self._refuse(record)
            if alive is False:
                logger.warning("output_dir %s: taking over the lease of %s, whose process is gone from this host",
                               self.dir, describe(record))
                self._write()
                break
            if time.time() - beat > self.stale_seconds:
                logger.warning("output_dir %s: taking over a stale lease: %s has not renewed it for %.0f s "
                               "(stale after %.0f s); if that process still runs, stop it: two writers overwrite "
                               "each other's checkpoints", self.dir, describe(record), time.time() - beat,
                               self.stale_seconds)
                self._write()
                break
            # Another host's lease, fresh: its holder is alive if the heartbeat moves while we watch.
            if first is None:
                first, deadline = (beat, record.get("token")), time.monotonic() + 2.5 * self.heartbeat_seconds
                logger.info("output_dir %s: leased by %s; watching its heartbeat", self.dir, describe(record))
            elif (beat, record.get("token")) != first:
                self._refuse(record)
            elif time.monotonic() > deadline:
                deadline = float("inf")  # not moving: wait until it is stale
                logger.warning("output_dir %s: the lease of %s is not renewed; taking it over once it is stale "
                               "(%.0f s without a heartbeat)", self.dir, describe(record), self.stale_seconds)
            time.sleep(min(1.0, self.heartbeat_seconds / 4))
        self._start_heartbeat()

    def _refuse(self, record: dict) -> None:
        raise LeaseHeld(
            f"output_dir {self.dir}: in use by {describe(record)}; one writer per output_dir: stop that run, or give "
            f"this one another output_dir (a lease without a heartbeat for {self.stale_seconds / 60:g} min is taken "
            f"over: output_dir_lease_stale_minutes)")

    # --- holding it -----------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="r1v-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                record = self._read()
                if record is not None and record.get("token") != self.token:
                    self.lost = record
                    logger.error("output_dir %s: the lease was taken over by %s; this run stops before its next "
                                 "save", self.dir, describe(record))
                    return
                self._write()
            except OSError as exc:  # a full or unreachable volume: the next beat tries again
                logger.warning("output_dir %s: could not renew the lease: %s", self.dir, exc)

    def check(self) -> None:
        """Raises LeaseLost once another writer holds the lease."""
        if self.lost is not None:
            raise LeaseLost(f"output_dir {self.dir}: the lease was taken over by {describe(self.lost)} (this run's "
                            "heartbeat was late by more than the stale limit); stopping so the two runs do not "
                            "overwrite each other")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.heartbeat_seconds + 5)
        # Safe on a lease never taken (acquire refused or interrupted): only a file with our token goes.
        # An error here must not replace the one the run may be ending with (Preempted, DiskFull).
        try:
            record = self._read()
            if record is not None and record.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            for tmp in self.dir.glob(f".{LEASE_FILE}.{self.token}.tmp"):
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("output_dir %s: could not remove the lease %s: %s; the next run takes it over once it "
                           "is stale", self.dir, self.path, exc)
        if self._created_dir:
            try:
                self.dir.rmdir()  # only when nothing else was written there
            except OSError:
                pass
