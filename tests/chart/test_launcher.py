"""files/launch.sh, the training pods' entry point, run for real by sh with stub `python` and
`torchrun` on PATH: the exit codes the restart policies read (2 permanent, 200 and 128+ retried),
the start-up check of the model and data set, the preflight, SIGTERM reaching torchrun, the
restart budget by cause, and SIGTERM as PID 1.
The stubs stand in for `python -m r1v_job --preflight_only true` and torchrun; the launcher itself
is the exact text the chart mounts (read from the rendered ConfigMap)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.chart.render import only, render

ARGS = ["-m", "r1v_job", "--config", "/etc/r1v/recipe.yaml"]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    path = tmp_path_factory.mktemp("launcher") / "launch.sh"
    path.write_text(only(render({}), "ConfigMap", "-scripts")["data"]["launch.sh"])
    return path


@pytest.fixture
def pod(tmp_path):
    """A pod's view: a volume with the model and data set, stubs that log their argv and exit with
    $STUB_<NAME>_RC (torchrun sleeps $STUB_TORCHRUN_SLEEP first)."""
    model = tmp_path / "data" / "models" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (tmp_path / "data" / "datasets" / "d").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "torchrun"):
        stub = bin_dir / name
        var = name.upper()
        stub.write_text("#!/bin/sh\n"
                        f'echo "{name} $*" >> "$STUB_LOG"\n'
                        f'[ -n "${{STUB_{var}_SLEEP:-}}" ] && '
                        f'{{ trap \'echo "{name} got TERM" >> "$STUB_LOG"; kill $! 2>/dev/null; exit 143\' TERM; '
                        f'sleep "$STUB_{var}_SLEEP" & wait $!; }}\n'
                        # As the trainer does when it stops on SIGTERM (on this node or another)
                        f'[ -n "${{STUB_{var}_PREEMPTED:-}}" ] && touch "$R1V_PREEMPTED_FILE"\n'
                        # As a worker does that exits 2 (bad input, a lease held or lost) under torchrun
                        f'[ -n "${{STUB_{var}_PERMANENT:-}}" ] && touch "$R1V_PERMANENT_FILE"\n'
                        f'exit "${{STUB_{var}_RC:-0}}"\n')
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "calls.log"),
           "R1V_MODEL_PATH": str(model), "R1V_DATASET_PATH": str(tmp_path / "data" / "datasets" / "d"),
           "R1V_CLAIM": "r1v-data", "R1V_PREFLIGHT": "1"}
    return tmp_path, env


def launch(launcher, env, **extra):
    proc = subprocess.run(["sh", str(launcher), *ARGS], env={**env, **extra}, capture_output=True, text=True,
                          timeout=60)
    return proc


def calls(tmp_path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("torchrun_rc, expected", [
    (0, 0),      # finished
    (1, 200),    # a worker failed: retried (the operator retries 128-255)
    (2, 2),      # torchrun's own usage error: permanent
    (137, 137),  # killed (OOM killer): retried
])
def test_torchrun_outcome_becomes_the_restart_policy_code(launcher, pod, torchrun_rc, expected):
    tmp_path, env = pod
    proc = launch(launcher, env, STUB_TORCHRUN_RC=str(torchrun_rc))
    assert proc.returncode == expected, proc.stderr
    assert calls(tmp_path) == [f"python {' '.join(ARGS)} --preflight_only true", f"torchrun {' '.join(ARGS)}"]


@pytest.mark.parametrize("preflight_rc, expected", [(2, 2), (1, 200), (139, 139)])
def test_a_failed_preflight_stops_before_torchrun(launcher, pod, preflight_rc, expected):
    tmp_path, env = pod
    proc = launch(launcher, env, STUB_PYTHON_RC=str(preflight_rc))
    assert proc.returncode == expected
    assert not any(c.startswith("torchrun") for c in calls(tmp_path))


def test_preflight_can_be_turned_off(launcher, pod):
    tmp_path, env = pod
    assert launch(launcher, env, R1V_PREFLIGHT="0").returncode == 0
    assert calls(tmp_path) == [f"torchrun {' '.join(ARGS)}"]


@pytest.mark.parametrize("missing, named", [("model", "no model at"), ("dataset", "no data set at")])
def test_missing_model_or_dataset_is_one_line_and_permanent(launcher, pod, missing, named):
    tmp_path, env = pod
    shutil.rmtree(env["R1V_MODEL_PATH"] if missing == "model" else env["R1V_DATASET_PATH"])
    proc = launch(launcher, env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "r1v-data" in lines[0] and "dataPrep.enabled=true" in lines[0]
    assert calls(tmp_path) == []  # nothing started


def test_waits_for_the_data_prep_marker(launcher, pod):
    tmp_path, env = pod
    marker = tmp_path / "data" / ".r1v-prep" / "r1v.json"
    proc = subprocess.Popen(["sh", str(launcher), *ARGS], env={**env, "R1V_DATA_MARKER": str(marker),
                                                                "R1V_WAIT_SECONDS": "0.1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert proc.poll() is None and calls(tmp_path) == []
    marker.parent.mkdir()
    marker.write_text("{}")
    assert proc.wait(30) == 0
    assert "waiting for" in proc.stderr.read()


def test_sigterm_reaches_torchrun_and_its_code_is_kept(launcher, pod):
    tmp_path, env = pod
    proc = subprocess.Popen(["sh", str(launcher), *ARGS], env={**env, "STUB_TORCHRUN_SLEEP": "30"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not any(c.startswith("torchrun") for c in calls(tmp_path)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the kubelet stopping the pod
    assert proc.wait(20) == 143  # preempted: retryable, never a crash
    assert "torchrun got TERM" in calls(tmp_path)
    assert "preempted" in proc.stderr.read().decode()


@pytest.mark.parametrize("failing_rank, refused, expected", [(None, False, 0), (1, False, 200), (1, True, 2)])
def test_real_torchrun_takes_the_operators_pet_env_and_a_worker_crash_is_retryable(
        launcher, pod, tmp_path, failing_rank, refused, expected):
    """The real torchrun under the launcher, with the PET_* variables both operators inject
    (Training Operator v1.9 and Trainer v2.3's torch plugin use the same names) and no topology
    flags, as the chart runs it. A failing worker makes torchrun exit 1, which the launcher turns
    into the retryable 200: the reason the launcher exists. A worker whose r1v_job refuses its input
    after the preflight (exit 2, as for a lease another writer holds) stays permanent: 2, not 200."""
    import sys
    from pathlib import Path

    from tests.helpers import free_port

    _, env = pod
    worker = tmp_path / "worker.py"
    fail = ("from r1v_job.grpo import main; sys.exit(main(['--no_such_field', '1']))" if refused else "sys.exit(3)")
    worker.write_text("import os, sys\n"
                      "rank = os.environ['RANK']\n"
                      "open(os.path.join(sys.argv[1], 'rank' + rank), 'w').write(os.environ['WORLD_SIZE'])\n"
                      f"if rank == {str(failing_rank)!r}:\n    {fail}\n")
    out = tmp_path / "ranks"
    out.mkdir()
    real = {**env, "PATH": f"{tmp_path / 'bin'}:{sys.executable.rsplit('/', 1)[0]}:{os.environ['PATH']}",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "R1V_PREFLIGHT": "0", "OMP_NUM_THREADS": "1",
            "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
    (tmp_path / "bin" / "torchrun").unlink()  # the venv's torchrun, not the stub
    proc = subprocess.run(["sh", str(launcher), str(worker), str(out)], env=real, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == expected, proc.stderr[-2000:]
    assert {p.name: p.read_text() for p in out.iterdir()} == {"rank0": "2", "rank1": "2"}  # WORLD_SIZE 2
    if refused:
        assert "r1v_job: error: " in proc.stderr  # the worker's own line, above the launcher's
        assert proc.stderr.strip().splitlines()[-1] == "r1v launch: the trainer refused its input (above); not retrying"


def _budget(tmp_path, **extra):
    return {"R1V_MAX_RESTARTS": "2", "R1V_OUTPUT_DIR": str(tmp_path / "data" / "runs" / "r"),
            "R1V_INSTALL_ID": "install-1", "R1V_POD_NAME": "r1v-master-0", **extra}


def test_a_crash_that_repeats_before_any_new_checkpoint_gives_up_after_the_backoff_limit(launcher, pod):
    """Under ExitCode the operator does not count a PyTorchJob's restarts against backoffLimit
    (training-operator v1.9 counts container restarts under OnFailure/Always only); the launcher
    keeps that budget on the volume, per install and pod, and starts it again whenever a new
    checkpoint exists."""
    tmp_path, env = pod
    budget = _budget(tmp_path, STUB_TORCHRUN_RC="1")
    assert [launch(launcher, env, **budget).returncode for _ in range(3)] == [200, 200, 200]  # first start + 2 restarts
    refused = launch(launcher, env, **budget)
    assert refused.returncode == 2
    assert "crashed 3 times at checkpoint step 0" in refused.stderr and "backoffLimit 2" in refused.stderr
    assert sum(c.startswith("torchrun") for c in calls(tmp_path)) == 3  # the refused start ran nothing
    (tmp_path / "data" / "runs" / "r" / "checkpoint-50").mkdir()  # progress since: the budget starts again
    assert [launch(launcher, env, **budget).returncode for _ in range(3)] == [200, 200, 200]
    assert launch(launcher, env, **budget).returncode == 2
    # another pod of the same job keeps its own count
    assert launch(launcher, env, **{**budget, "R1V_POD_NAME": "r1v-worker-0"}).returncode == 200
    # installing the run again (a new install id) starts a new budget on the same volume
    assert launch(launcher, env, **{**budget, "R1V_INSTALL_ID": "install-2"}).returncode == 200


def test_preemptions_never_use_the_restart_budget(launcher, pod):
    """A trainer that stops on SIGTERM ten times in a row (torchrun exits 1, the trainer left its
    preempted file) is retried every time, and the crash budget is untouched afterwards."""
    tmp_path, env = pod
    preempted = _budget(tmp_path, STUB_TORCHRUN_RC="1", STUB_TORCHRUN_PREEMPTED="1")
    runs = [launch(launcher, env, **preempted) for _ in range(10)]
    assert [r.returncode for r in runs] == [143] * 10, runs[-1].stderr
    assert all("preempted" in r.stderr and "a worker failed" not in r.stderr for r in runs)
    crash = _budget(tmp_path, STUB_TORCHRUN_RC="1")
    assert [launch(launcher, env, **crash).returncode for _ in range(4)] == [200, 200, 200, 2]


def test_a_permanent_error_in_a_worker_fails_the_job_at_once_even_beside_a_preemption(launcher, pod):
    """torchrun reports a worker's exit 2 as its own 1; the file the worker created keeps it permanent
    (it comes first: a run that refuses its input would refuse it again after a preemption too)."""
    tmp_path, env = pod
    for extra in ({}, {"STUB_TORCHRUN_PREEMPTED": "1"}):
        proc = launch(launcher, env, STUB_TORCHRUN_RC="1", STUB_TORCHRUN_PERMANENT="1", **_budget(tmp_path), **extra)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "r1v launch: the trainer refused its input (above); not retrying"
    assert launch(launcher, env, STUB_TORCHRUN_RC="1").returncode == 200  # the file is the launcher's own each time


def _pid1(launcher, env, **extra):
    """The launcher as PID 1 of a new PID namespace, as in a container: sh ignores a SIGTERM it
    has no trap for there."""
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", str(launcher), *ARGS],
                            env={**env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _term_pid1(proc):
    """SIGTERM to the namespace's PID 1 (unshare's forked child), as the kubelet sends it."""
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGTERM)


needs_unshare = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                   reason="needs root and unshare for a PID namespace")


@needs_unshare
def test_as_pid_1_sigterm_stops_the_wait_for_data_prep_at_once(launcher, pod):
    tmp_path, env = pod
    proc = _pid1(launcher, env, R1V_DATA_MARKER=str(tmp_path / "never"), R1V_WAIT_SECONDS="30",
                 **_budget(tmp_path))
    time.sleep(0.5)  # in the wait's sleep
    started = time.monotonic()
    _term_pid1(proc)
    assert proc.wait(10) == 143
    assert time.monotonic() - started < 5  # not the 30 s sleep, nor the pod's grace period
    assert "SIGTERM while waiting for data prep" in proc.stderr.read()
    assert calls(tmp_path) == []


@needs_unshare
def test_as_pid_1_sigterm_during_the_preflight_stops_it_and_uses_no_budget(launcher, pod):
    tmp_path, env = pod
    proc = _pid1(launcher, env, STUB_PYTHON_SLEEP="30", **_budget(tmp_path))
    _wait_for(lambda: any(c.startswith("python") for c in calls(tmp_path)))
    time.sleep(0.3)
    started = time.monotonic()
    _term_pid1(proc)
    assert proc.wait(10) == 143
    assert time.monotonic() - started < 5
    assert "python got TERM" in calls(tmp_path) and not any(c.startswith("torchrun") for c in calls(tmp_path))
    starts = tmp_path / "data" / "runs" / "r" / ".r1v-starts" / "install-1" / "r1v-master-0"
    assert starts.read_text().split() == ["0", "0"]  # refunded: a preemption is not a crash


def test_the_wait_for_data_prep_times_out_with_its_own_permanent_code(launcher, pod):
    tmp_path, env = pod
    proc = launch(launcher, env, R1V_DATA_MARKER=str(tmp_path / "never"), R1V_WAIT_SECONDS="0.2",
                  R1V_DATA_WAIT_TIMEOUT="1")
    assert proc.returncode == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert "never after 1 s" in last and "dataPrep.waitTimeoutSeconds" in last and "data-prep" in last
    assert calls(tmp_path) == []


def test_without_a_budget_every_crash_is_retried(launcher, pod):
    tmp_path, env = pod
    assert [launch(launcher, env, STUB_TORCHRUN_RC="1").returncode for _ in range(5)] == [200] * 5


def test_the_chart_gives_the_launcher_its_grace_period_install_id_and_data_wait():
    values = {"trainer": {"terminationGracePeriodSeconds": 420},
              "dataPrep": {"enabled": True, "waitTimeoutSeconds": 99}}
    job = only(render(values), "PyTorchJob")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert pod["terminationGracePeriodSeconds"] == 420 and env["R1V_GRACE_SECONDS"] == "405"
    assert env["R1V_DATA_WAIT_TIMEOUT"] == "99"
    assert env["R1V_INSTALL_ID"] == job["metadata"]["annotations"]["r1v.dev/install-id"]
    assert env["R1V_INSTALL_ID"] != {e["name"]: e.get("value") for e in only(render({}), "PyTorchJob")["spec"][
        "pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}["R1V_INSTALL_ID"]  # new install
    fixed = only(render({"trainer": {"installId": "exp-1"}}), "PyTorchJob")
    assert fixed["metadata"]["annotations"]["r1v.dev/install-id"] == "exp-1"


def test_a_trainjob_pod_keys_its_budget_by_node_rank(launcher, pod):
    """A TrainJob's recreated pods get new names: the budget follows the node rank instead."""
    tmp_path, env = pod
    budget = {k: v for k, v in _budget(tmp_path, STUB_TORCHRUN_RC="1").items() if k != "R1V_POD_NAME"}
    for rank in ("0", "1"):
        assert [launch(launcher, env, **budget, PET_NODE_RANK=rank).returncode for _ in range(4)] == [200, 200, 200, 2]
    assert sorted(p.name for p in (tmp_path / "data" / "runs" / "r" / ".r1v-starts" / "install-1").iterdir()) == [
        "node-0", "node-1"]
