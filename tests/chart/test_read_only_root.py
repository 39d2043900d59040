"""The trainer (recipes/smoke_cpu.yaml through `python -m r1v_job`) and the evaluator (`python -m
eval_job`) run with a read-only root filesystem, writing only where the chart's pods can: the paths
the rendered containers mount writable (/data, /dev/shm, the /tmp emptyDir) with the chart's HOME and
cache variables. Run in a mount namespace (`unshare --mount`, root): / and every mount below it
remounted read-only, a fresh folder bound over /tmp as the emptyDir, the pod's /data inside it
(/tmp/data: a mount point /data cannot be made on a read-only host)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1v_job.synthetic import write_superclevr_eval
from tests.chart.render import only, render

REPO = Path(__file__).resolve().parents[2]
# The chart's variables for where programs write (besides their arguments).
WRITE_ENV = ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "HF_HOME",
             "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

pytestmark = pytest.mark.slow


def _chart_container(kind: str) -> dict:
    objects = render()
    if kind == "trainer":
        return only(objects, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    return only(objects, "Job", "-eval")["spec"]["template"]["spec"]["containers"][0]


def _pod_env(container: dict) -> dict[str, str]:
    """The chart's write-related variables, /data rebased to /tmp/data (see the module docstring)."""
    env = {e["name"]: e["value"] for e in container["env"] if e["name"] in WRITE_ENV}
    assert {"HOME", "HF_HOME", "TRITON_CACHE_DIR"} <= env.keys()
    return {k: v.replace("/data/", "/tmp/data/") for k, v in env.items()}


# Namespace script: $1 the folder bound over /tmp, $2 a path outside it that must be read-only, $3 the
# checkout and its interpreter's prefix (":"-separated) to keep visible, read-only, where they live under
# /tmp (a clone there, as CI may make it), the rest the command. /proc, /sys and /dev stay as a container
# runtime gives them (/dev/shm is the pod's dshm).
_SCRIPT = r"""
set -e
scratch=$1; probe=$2; keep=$3; shift 3
kept=
for path in $(echo "$keep" | tr ':' ' '); do
  case "$path" in /tmp/*) mkdir -p "$scratch${path#/tmp}"; mount --bind "$path" "$scratch${path#/tmp}"
                          kept="$kept $path";; esac
done
mount --rbind "$scratch" /tmp
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp|/tmp/*) continue;; esac
  mount -o remount,bind,ro "$m"
done
for path in $kept; do mount -o remount,bind,ro "$path"; done
if touch "$probe" 2>/dev/null; then rm -f "$probe"; echo "the root filesystem is still writable" >&2; exit 90; fi
exec "$@"
"""


def _run_read_only(tmp_path: Path, scratch: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    script = tmp_path / "ro.sh"
    script.write_text(_SCRIPT)
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "TOKENIZERS_PARALLELISM") if k in os.environ}
    full_env = {**keep, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    visible = ":".join(str(Path(p).resolve()) for p in (REPO, sys.prefix))
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(script), str(scratch),
                           str(REPO / ".read-only-probe"), visible, *argv],
                          cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def can_unshare():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a mount namespace")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount is not permitted here: {probe.stderr.strip()}")


def test_smoke_run_and_evaluator_write_only_to_the_declared_paths(can_unshare, tiny_model_dir, clevr_train, tmp_path):
    trainer, evaluator = _chart_container("trainer"), _chart_container("evaluator")
    for c in (trainer, evaluator):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        assert writable == {"/data", "/dev/shm", "/tmp"}, writable  # what this test leaves writable

    scratch = tmp_path / "scratch"  # the pod's /tmp emptyDir, holding its /data
    data = scratch / "data"
    shutil.copytree(tiny_model_dir, data / "models" / "tiny")
    shutil.copytree(clevr_train.parent, data / "datasets" / "clevr")
    questions = write_superclevr_eval(data / "datasets" / "superclevr", n=2, size=112, seed=0)
    in_pod = lambda p: "/tmp/" + str(p.relative_to(scratch))  # noqa: E731

    out = "/tmp/data/runs/ro"
    train = _run_read_only(
        tmp_path, scratch, _pod_env(trainer), sys.executable, "-m", "r1v_job", "--config", "recipes/smoke_cpu.yaml",
        "--model_name_or_path", in_pod(data / "models" / "tiny"),
        "--dataset_name", in_pod(data / "datasets" / "clevr" / clevr_train.name), "--offline_bootstrap", "false",
        "--output_dir", out, "--max_steps", "1", "--save_steps", "1", "--per_device_train_batch_size", "4",
        "--max_completion_length", "4", "--metrics_port", "0")
    assert train.returncode == 0, train.stderr[-3000:]
    marker = json.loads((data / "runs" / "ro" / "training_complete.json").read_text())
    assert marker["global_step"] == 1
    assert marker["source"]["model"] == in_pod(data / "models" / "tiny")

    evaluate = _run_read_only(
        tmp_path, scratch, _pod_env(evaluator), sys.executable, "-m", "eval_job", "--model", out,
        "--data", in_pod(questions), "--out", f"{out}/eval", "--max-new-tokens", "4", "--batch-size", "2")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert json.loads((data / "runs" / "ro" / "eval" / "final" / "cot" / "summary.json").read_text())["evaluated"] == 2
    assert not (REPO / ".read-only-probe").exists()


def test_the_namespace_really_is_read_only_outside_the_declared_paths(can_unshare, tmp_path):
    """The check can fail: a program writing to its working directory (the image's /opt/r1v) is refused."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = _run_read_only(tmp_path, scratch, {"HOME": "/tmp"}, sys.executable, "-c",
                            "open('written-to-cwd', 'w')")
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    ok = _run_read_only(tmp_path, scratch, {"HOME": "/tmp"}, sys.executable, "-c",
                        "import os; open(os.path.expanduser('~/ok'), 'w').write('x')")
    assert ok.returncode == 0, ok.stderr
    assert (scratch / "ok").read_text() == "x" and not (REPO / "written-to-cwd").exists()
