"""One writer per output_dir: a second run on a leased folder exits 2 naming the owner, before any model
loads; a stale lease is taken over with a warning; a lease taken over under a running writer stops it."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1v_job.grpo import main
from r1v_job.lease import LEASE_FILE, Lease, LeaseHeld, LeaseLost

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "smoke_cpu.yaml"
HOLD = ("import sys, time\nfrom r1v_job.lease import Lease\nLease(sys.argv[1], 5).acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process on this host holding the lease on tmp_path/run, taken by the trainer's own code."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "POD_NAME": "r1v-master-0"})
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_trainer_on_one_output_dir_exits_2_naming_the_first(holder, tiny_model_dir, clevr_train, capsys,
                                                                     monkeypatch):
    import r1v_job.grpo as grpo

    out, first = holder
    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("the second writer built a trainer"))
    argv = ["--config", str(SMOKE), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(clevr_train),
            "--output_dir", str(out), "--offline_bootstrap", "false"]
    monkeypatch.setenv("R1V_PERMANENT_FILE", str(out.parent / "permanent"))
    assert main(argv) == 2
    assert (out.parent / "permanent").exists()  # how the launcher learns it under torchrun (which exits 1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("r1v_job: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.match(rf"r1v_job: error: output_dir {out}: in use by pod r1v-master-0 \(host {socket.gethostname()}, "
                    rf"pid {first.pid}, last heartbeat \d+ s ago\); one writer per output_dir", lines[0]), lines[0]
    assert json.loads((out / LEASE_FILE).read_text())["pid"] == first.pid  # the first one's lease is untouched

    # Once the first is gone (SIGKILL: no release), its lease is taken over at once on this host.
    first.send_signal(signal.SIGKILL)
    first.wait()
    lease = Lease(out, 5)
    lease.acquire()
    assert json.loads((out / LEASE_FILE).read_text())["pid"] == os.getpid()
    lease.release()
    assert not (out / LEASE_FILE).exists()


def _foreign(out: Path, heartbeat: float, token: str = "other") -> None:
    out.mkdir(exist_ok=True)
    (out / LEASE_FILE).write_text(json.dumps({"pod": "r1v-master-0", "host": "node-7", "boot_id": "another-node",
                                              "pid": 12, "token": token, "heartbeat": heartbeat}))


def test_a_stale_lease_of_another_host_is_taken_over_with_a_warning(tmp_path, caplog):
    _foreign(tmp_path, time.time() - 120)
    lease = Lease(tmp_path, stale_minutes=1)
    with caplog.at_level(logging.WARNING, logger="r1v_job.lease"):
        lease.acquire()
    assert re.search(r"taking over a stale lease: pod r1v-master-0 \(host node-7, pid 12, last heartbeat 12\d s ago\) "
                     r"has not renewed it for 12\d s \(stale after 60 s\)", caplog.text), caplog.text
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == lease.token
    lease.release()
    assert not (tmp_path / LEASE_FILE).exists() and tmp_path.exists()  # a folder it did not create stays


def test_a_fresh_lease_of_another_host_whose_heartbeat_moves_is_refused(tmp_path):
    _foreign(tmp_path, time.time())
    stop = threading.Event()

    def beat():  # the other host's writer, alive
        while not stop.wait(0.2):
            _foreign(tmp_path, time.time())

    threading.Thread(target=beat, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(LeaseHeld, match=r"in use by pod r1v-master-0 \(host node-7, pid 12"):
            Lease(tmp_path, stale_minutes=0.05).acquire()  # stale after 3 s, heartbeats every 1 s
        assert time.monotonic() - started < 3
    finally:
        stop.set()


def test_a_fresh_lease_that_stops_beating_is_taken_over_once_stale(tmp_path, caplog):
    _foreign(tmp_path, time.time())
    lease = Lease(tmp_path, stale_minutes=0.05)  # stale after 3 s; watched for 2.5 s
    with caplog.at_level(logging.WARNING, logger="r1v_job.lease"):
        lease.acquire()
    assert "is not renewed; taking it over once it is stale" in caplog.text
    assert "taking over a stale lease" in caplog.text
    lease.release()


def test_the_holder_renews_its_heartbeat_and_stops_when_the_lease_is_taken(tmp_path):
    lease = Lease(tmp_path / "run", stale_minutes=0.03)  # heartbeat every 0.6 s
    lease.acquire()
    first = json.loads((tmp_path / "run" / LEASE_FILE).read_text())["heartbeat"]
    time.sleep(1.5)
    assert json.loads((tmp_path / "run" / LEASE_FILE).read_text())["heartbeat"] > first
    lease.check()  # still ours
    _foreign(tmp_path / "run", time.time(), token="a-newcomer")
    time.sleep(1.5)
    with pytest.raises(LeaseLost, match=r"taken over by pod r1v-master-0 \(host node-7"):
        lease.check()
    lease.release()
    assert json.loads((tmp_path / "run" / LEASE_FILE).read_text())["token"] == "a-newcomer"  # not ours to remove


def _lease_args(out: Path, stale_minutes: float = 5):
    from types import SimpleNamespace

    return SimpleNamespace(output_dir_lease_stale_minutes=stale_minutes), SimpleNamespace(output_dir=str(out))


def test_a_sigterm_while_the_lease_is_taken_leaves_no_lease_behind(tmp_path, monkeypatch):
    """SIGTERM (Preempted) after the lease file is written and before its heartbeat starts: released."""
    from r1v_job.grpo import output_dir_lease
    from r1v_job.preemption import Preempted

    def sigterm(self):
        raise Preempted("SIGTERM outside the training loop: nothing to save")

    monkeypatch.setattr(Lease, "_start_heartbeat", sigterm)
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        with output_dir_lease(*_lease_args(out)):
            pytest.fail("the lease was not taken: nothing to run")
    assert not out.exists()  # the lease file gone, and the folder that taking it created


def test_a_lease_that_cannot_be_removed_does_not_hide_the_error_the_run_ends_with(tmp_path, monkeypatch, caplog):
    from r1v_job.grpo import output_dir_lease
    from r1v_job.preemption import DiskFull

    out = tmp_path / "run"
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == LEASE_FILE:
            raise OSError(5, "Input/output error", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="r1v_job.lease"), pytest.raises(DiskFull, match="ENOSPC"):
        with output_dir_lease(*_lease_args(out)):
            raise DiskFull(out / "checkpoint-2", "the checkpoint")
    assert f"could not remove the lease {out / LEASE_FILE}: [Errno 5] Input/output error" in caplog.text


# Two ranks at a step end where rank 0's lease was taken over: both stop there without saving (the
# folder is another writer's), instead of rank 0 raising alone while rank 1 waits in the collective.
AGREE = """
import datetime, json, os, sys
from types import SimpleNamespace
import torch.distributed as dist
from transformers import TrainerControl, TrainerState
from r1v_job.preemption import PreemptionCallback, StopRequest
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
rank = dist.get_rank()
lease = SimpleNamespace(lost={"pod": "r1v-master-0"}) if rank == 0 else None  # rank 0 holds it
callback = PreemptionCallback(StopRequest(), lease)
control = TrainerControl(should_save=True)  # the step's save, as save_steps asks for it
callback.on_step_end(SimpleNamespace(device="cpu"), TrainerState(global_step=3), control)
json.dump({"stop": control.should_training_stop, "save": control.should_save, "lost": callback.lease_lost,
           "preempted": callback.stopped_at}, open(os.path.join(sys.argv[1], f"rank{rank}"), "w"))
dist.destroy_process_group()
"""


def test_a_lost_lease_stops_every_rank_at_the_same_step_without_a_save(tmp_path):
    from tests.helpers import free_port

    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {"stop": True, "save": False, "lost": True, "preempted": None}
    assert {r: json.loads((tmp_path / r).read_text()) for r in ("rank0", "rank1")} == {"rank0": expected,
                                                                                         "rank1": expected}
