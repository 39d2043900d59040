"""files/launch.sh, the training pods' entry point, run for real by sh with stub `python` and
`torchrun` on PATH: the exit codes the restart policies read (2 permanent, 200 and 128+ retried),
the start-up check of the model and data set, the preflight, and SIGTERM reaching torchrun.
The stubs stand in for `python -m r1v_job --preflight_only true` and torchrun; the launcher itself
is the exact text the chart mounts (read from the rendered ConfigMap)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.chart.r1v_chart_helpers import only, render

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
                        f'[ -n "${{STUB_{var}_SLEEP:-}}" ] && {{ trap \'echo "{name} got TERM" >> "$STUB_LOG"; exit 143\' TERM; '
                        f'sleep "$STUB_{var}_SLEEP" & wait $!; }}\n'
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
    assert proc.wait(20) == 143  # torchrun's own exit (128+15): retryable
    assert "torchrun got TERM" in calls(tmp_path)


@pytest.mark.parametrize("failing_rank, expected", [(None, 0), (1, 200)])
def test_real_torchrun_takes_the_operators_pet_env_and_a_worker_crash_is_retryable(
        launcher, pod, tmp_path, failing_rank, expected):
    """The real torchrun under the launcher, with the PET_* variables both operators inject
    (Training Operator v1.9 and Trainer v2.3's torch plugin use the same names) and no topology
    flags, as the chart runs it. A failing worker makes torchrun exit 1, which the launcher turns
    into the retryable 200: the reason the launcher exists."""
    import sys

    from tests.helpers import free_port

    _, env = pod
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys\n"
                      "rank = os.environ['RANK']\n"
                      "open(os.path.join(sys.argv[1], 'rank' + rank), 'w').write(os.environ['WORLD_SIZE'])\n"
                      f"sys.exit(3 if rank == {str(failing_rank)!r} else 0)\n")
    out = tmp_path / "ranks"
    out.mkdir()
    real = {**env, "PATH": f"{tmp_path / 'bin'}:{sys.executable.rsplit('/', 1)[0]}:{os.environ['PATH']}",
            "R1V_PREFLIGHT": "0", "OMP_NUM_THREADS": "1",
            "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}
    (tmp_path / "bin" / "torchrun").unlink()  # the venv's torchrun, not the stub
    proc = subprocess.run(["sh", str(launcher), str(worker), str(out)], env=real, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == expected, proc.stderr[-2000:]
    assert {p.name: p.read_text() for p in out.iterdir()} == {"rank0": "2", "rank1": "2"}  # WORLD_SIZE 2


def test_a_crash_that_repeats_before_any_new_checkpoint_gives_up_after_the_backoff_limit(launcher, pod):
    """Under ExitCode the operator does not count a PyTorchJob's restarts against backoffLimit
    (training-operator v1.9 counts container restarts under OnFailure/Always only); the launcher
    keeps that budget on the volume, per pod, and starts it again whenever a new checkpoint exists."""
    tmp_path, env = pod
    out = tmp_path / "data" / "runs" / "r"
    budget = {"R1V_MAX_RESTARTS": "2", "R1V_OUTPUT_DIR": str(out), "R1V_POD_NAME": "r1v-master-0",
              "STUB_TORCHRUN_RC": "1"}
    assert [launch(launcher, env, **budget).returncode for _ in range(3)] == [200, 200, 200]  # first start + 2 restarts
    refused = launch(launcher, env, **budget)
    assert refused.returncode == 2
    assert "started 4 times at checkpoint step 0" in refused.stderr and "backoffLimit 2" in refused.stderr
    assert sum(c.startswith("torchrun") for c in calls(tmp_path)) == 3  # the refused start ran nothing
    (out / "checkpoint-50").mkdir()  # progress since: the budget starts again
    assert [launch(launcher, env, **budget).returncode for _ in range(3)] == [200, 200, 200]
    assert launch(launcher, env, **budget).returncode == 2
    # another pod of the same job keeps its own count
    assert launch(launcher, env, **{**budget, "R1V_POD_NAME": "r1v-worker-0"}).returncode == 200


def test_without_a_budget_every_crash_is_retried(launcher, pod):
    tmp_path, env = pod
    assert [launch(launcher, env, STUB_TORCHRUN_RC="1").returncode for _ in range(5)] == [200] * 5
