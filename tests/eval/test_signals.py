"""The evaluator as a pod runs it: as PID 1 it stops at once on SIGTERM (exit 143) instead of waiting
out the grace period, and a full disk is one line naming ENOSPC and the file, with the retryable
exit 6 and no temp file left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import tmpfs

REPO = Path(__file__).resolve().parents[2]


def _evaluator(args, pid1=False, stderr=subprocess.PIPE):
    cmd = [sys.executable, "-m", "eval_job", *map(str, args)]
    if pid1:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a PID namespace")
def test_as_pid_1_sigterm_stops_the_evaluator_at_once(questions, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        proc = _evaluator(["--checkpoints", run, "--data", questions, "--out", run / "eval", "--wait-for", "marker",
                           "--poll-interval", "30", "--timeout", "600"], pid1=True, stderr=stderr)
    deadline = time.monotonic() + 60
    while "waiting up to" not in log.read_text():  # imported, questions read, waiting for the marker
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.1)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    started = time.monotonic()
    os.kill(int(children[0]), signal.SIGTERM)  # PID 1 of the namespace, as the kubelet signals it
    proc.communicate(timeout=20)
    err = log.read_text()
    assert proc.returncode == 143, err[-2000:]
    assert time.monotonic() - started < 5  # not the 30 s poll, not the pod's grace period
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]


@pytest.fixture
def full_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as mount:
        (mount / "eval" / "final" / "cot").mkdir(parents=True)
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
        yield mount


def test_a_full_disk_is_one_line_with_enospc_and_the_path_and_exit_6(tiny_model, questions, full_disk):
    proc = _evaluator(["--model", tiny_model, "--data", questions, "--out", full_disk / "eval", "--batch-size", "6",
                       "--max-new-tokens", "4"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 6, err[-2000:]
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert "ENOSPC" in errors[0] and str(full_disk / "eval" / "final" / "cot" / "results.jsonl") in errors[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in (full_disk / "eval" / "final" / "cot").iterdir()) == [".lock"]  # no temp file left
